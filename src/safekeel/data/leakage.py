"""No leakage by default (docs/leakage.md): what a model or a setting was fitted on stays out of evaluation.

The rule: prompts used to identify safety tokens, to build training or safety data, or to tune a setting
(the safety monitor's probe prompts) stay out of every evaluation set, and the tools warn when they
overlap. Each fitted set is kept as a `FittedPrompts` group: what it was, the prompt ids and the prompts'
digests (`text.prompt_digest`: the sha256 of the normalised text, so a record holds no prompt text and two
spellings of one prompt still match). The overlap itself is always `data.records.check_overlap`.

- `records_group`: a group made from prompts (records, rows or strings);
- `tokens_group`: the prompts a safety-token artifact was identified on (its `prompt_ids` and
  `prompt_sha256`; an artifact written before they were recorded is read again from its `prompt_set` when
  that is a packaged set or a local file, else a note says overlap cannot be checked;
  `tokens.artifact.identification_prompts` reads it from a file);
- `run_record` / `run_groups`: the groups `train` records in `safekeel_run.json` (`fitted_prompts`), and
  the groups `eval safety` reads back from the run directory of the evaluated adapter or model;
- `benchmark_warnings`: `eval safety`'s warnings, per benchmark; `evaluation_set_warnings`: `train`'s
  warnings when the safety tokens were identified on an evaluation set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from safekeel.text import PromptDigest, prompt_digest

log = logging.getLogger(__name__)

RUN_FILE = "safekeel_run.json"
IDENTIFICATION = "safety-token identification"
ADVICE = ("identify the safety tokens on prompts no evaluation uses: harmbench-val, the default of "
          "`safekeel tokens identify`")


@dataclass(frozen=True)
class FittedPrompts:
    """One set of prompts something was fitted on. `kind` and `source` name it in warnings ("safety-token
    identification (tokens.json)"); `digests` are `text.prompt_digest`s, `ids` the prompt ids when known."""

    kind: str
    source: str
    digests: tuple[str, ...]
    ids: tuple[str, ...] = ()
    spec: str | None = None  # the prompt set's name, when there is one

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.source})" if self.source else self.kind

    def items(self) -> list[PromptDigest]:
        """The prompts as `check_overlap` takes them."""
        return [PromptDigest(d) for d in self.digests]

    def to_dict(self) -> dict:
        """The form recorded in safekeel_run.json: the digests as one space-separated string, so a run of
        thousands of rows adds one line to the file, not thousands."""
        out = {"kind": self.kind, "source": self.source, "spec": self.spec, "n": len(self.digests),
               "sha256": " ".join(self.digests)}
        if self.ids:
            out["ids"] = list(self.ids)
        return out

    @classmethod
    def from_dict(cls, data, where: str = "") -> FittedPrompts | None:
        """The group recorded by `to_dict` (the digests as a string or a list), or None when unreadable."""
        if not isinstance(data, dict):
            return None
        digests = data.get("sha256")
        digests = digests.split() if isinstance(digests, str) else _strings(digests)
        if not digests:
            return None
        source = str(data.get("source") or "")
        source = f"{source}, {where}" if source and where else source or where
        spec = data.get("spec") if isinstance(data.get("spec"), str) else None
        return cls(str(data.get("kind") or "fitted"), source, tuple(digests), tuple(_strings(data.get("ids"))), spec)


def _strings(value) -> list[str]:
    """`value` when it is a list of strings, else [] (old or hand-edited files must not crash a check)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


def _text(item) -> str:
    from safekeel.data.records import _prompt_text

    return _prompt_text(item)


def records_group(prompts, kind: str, source: str = "", spec: str | None = None, *, ids: bool = True) -> FittedPrompts:
    """A group from prompts (PromptRecords, rows or strings): distinct digests in first-seen order, with the
    id of each (when `ids` and the items have one)."""
    seen: dict[str, str] = {}
    for item in prompts:
        digest = prompt_digest(_text(item))
        if digest not in seen:
            seen[digest] = str(getattr(item, "id", None) or (item.get("id") if isinstance(item, dict) else "") or "")
    keep_ids = ids and all(seen.values())
    return FittedPrompts(kind, source, tuple(seen), tuple(seen.values()) if keep_ids else (), spec)


def identification_meta(prompts) -> dict:
    """What `tokens identify` records of its prompts (every prompt answered, in order): `prompt_ids` and
    `prompt_sha256`."""
    return {"prompt_ids": [p.id for p in prompts], "prompt_sha256": [prompt_digest(p.prompt) for p in prompts]}


def is_evaluation_set(spec: str | None) -> bool:
    """Whether the packaged set `spec` holds prompts `eval safety` scores by default (HarmBench test, in any
    subset; StrongREJECT's held-out part, alone or in a whole set). By name only: nothing is loaded."""
    base = str(spec or "").strip().partition(":")[0]
    return base == "harmbench" or (base.startswith("strongreject") and not base.endswith("-train"))


# -- safety tokens ---------------------------------------------------------------------------------------
def tokens_group(tokens, source: str) -> FittedPrompts | None:
    """The prompts the artifact `tokens` was identified on, or None (with a one-line note) when it records
    none and its prompt set cannot be read again here."""
    meta = tokens.meta or {}
    spec = meta.get("prompt_set") if isinstance(meta.get("prompt_set"), str) else None
    digests = _strings(meta.get("prompt_sha256"))
    if digests:
        return FittedPrompts(IDENTIFICATION, source, tuple(digests), tuple(_strings(meta.get("prompt_ids"))), spec)
    records = _reload(spec, meta.get("n_prompts"))
    if records is None:
        _note(f"note: {source} records no identification prompts (it predates their recording) and no prompt set "
              "readable here, so their overlap with evaluation sets is not checked; identify again to record them")
        return None
    _note(f"note: {source} records no identification prompts (it predates their recording); checking against "
          f"its prompt set {spec} as it loads now")
    return records_group(records, IDENTIFICATION, source, spec)


_NOTED: set[str] = set()


def _note(line: str) -> None:
    """Log `line` once per process: `train` reads one artifact in two places."""
    if line not in _NOTED:
        _NOTED.add(line)
        log.info("%s", line)


def _reload(spec: str | None, n_prompts) -> list | None:
    """The first `n_prompts` of the packaged or local prompt set `spec` (what identification took), or None
    for no spec, a hub set (a check must not need the network) or a set that does not load."""
    from safekeel.data.prompts import PACKAGED_SETS, load_prompts

    if not spec or not (spec.partition(":")[0] in PACKAGED_SETS or Path(spec).is_file()):
        return None
    limit = n_prompts if isinstance(n_prompts, int) and not isinstance(n_prompts, bool) and n_prompts > 0 else None
    try:
        return load_prompts(spec, limit=limit)
    except Exception:  # noqa: BLE001 - an old artifact's missing or changed file only means nothing to check
        return None


# -- training runs ---------------------------------------------------------------------------------------
def run_record(tokens_path: str | None, tokens, rows: list[dict], extra_rows: list[dict],
               monitor: dict | None) -> list[dict]:
    """`safekeel_run.json`'s `fitted_prompts`: the safety tokens' identification prompts, the training
    rows' prompts (digests only: task rows' ids say nothing), the defence's safety data and the safety
    monitor's probe prompts, harmful and benign (`monitor_probe.resolve_prompts` and
    `resolve_benign_prompts` record their digests)."""
    groups = []
    if tokens is not None:
        groups.append(tokens_group(tokens, Path(tokens_path).name if tokens_path else ""))
    groups.append(records_group(rows, "training", ids=False))
    if extra_rows:
        groups.append(records_group(extra_rows, "safety data"))
    benign = (monitor or {}).get("benign")
    for name, probe in (("safety monitor", monitor), ("safety monitor (benign)", benign if isinstance(benign, dict)
                                                      else None)):
        digests = _strings((probe or {}).get("probe_prompt_sha256"))
        if digests:
            spec = str(probe.get("prompts") or "")
            groups.append(FittedPrompts(name, spec, tuple(digests), tuple(_strings(probe.get("probe_prompts"))),
                                        spec or None))
    return [g.to_dict() for g in groups if g is not None and g.digests]


def _run_dirs(paths) -> list[Path]:
    """Directories that may hold a training run's record: each path given that is a directory, and the
    run directory above a checkpoint (`out/checkpoint-500` was trained by the run in `out`)."""
    out = []
    for p in paths:
        if not p or not Path(p).expanduser().is_dir():
            continue
        d = Path(p).expanduser()
        out += [d] + ([d.parent] if d.name.startswith("checkpoint-") else [])
    return list(dict.fromkeys(out))


def run_groups(*paths) -> list[FittedPrompts]:
    """What the training run of a model or adapter directory in `paths` was fitted on: its recorded
    `fitted_prompts`; [] when no path holds a safekeel run, or one recorded before them (with a note)."""
    for directory in _run_dirs(paths):
        try:
            record = json.loads((directory / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        where = f"run {directory}"
        if "fitted_prompts" in record:
            groups = [FittedPrompts.from_dict(d, where) for d in record["fitted_prompts"] or []]
            return [g for g in groups if g is not None]
        _note(f"note: the run in {directory} predates recording what it was fitted on, so its evaluation is not "
              "checked for overlap; give its safety tokens with --tokens to check those")
        return []
    return []


# -- the checks ------------------------------------------------------------------------------------------
def benchmark_warnings(sets, groups: list[FittedPrompts]) -> dict[str, list[str]]:
    """{benchmark name: warnings} for the evaluated prompt sets `sets` ([(spec, name, records)], as
    `evaluation.safety.load_benchmarks` gives them) that share prompts with a fitted group; benchmarks
    with none are left out."""
    from safekeel.data.prompts import heldout_hint
    from safekeel.data.records import check_overlap

    out: dict[str, list[str]] = {}
    for spec, name, records in sets:
        lines = [w + heldout_hint(spec) for g in groups
                 for w in check_overlap(records, g.items(), (f"evaluation ({name})", g.label))]
        if lines:
            out[name] = lines
    return out


def evaluation_set_warnings(group: FittedPrompts | None, sets: str | None) -> list[str]:
    """Warnings when `group` (the safety tokens' identification prompts) shares prompts with the evaluation
    sets `sets` (comma-separated, "none" for none): a model trained with those tokens would be scored on
    the prompts they were identified on. A set that does not load is reported, never fatal."""
    from safekeel.data.prompts import load_prompts
    from safekeel.data.records import check_overlap

    names = [s.strip() for s in (sets or "").split(",") if s.strip() and s.strip().lower() != "none"]
    out = []
    for name in names if group is not None else []:
        try:
            prompts = load_prompts(name)
        except Exception as exc:  # noqa: BLE001 - a set that cannot be loaded offline must not stop training
            out.append(f"could not check the safety tokens' overlap with {name}: {str(exc).splitlines()[0]}")
            continue
        out += [f"{w}; {ADVICE}" for w in check_overlap(prompts, group.items(), (f"evaluation ({name})", group.label))]
    return out
