"""The training rows of a run: task data, optionally mixed with harmful data, plus a summary.

Uses `safekeel.data.training_data.load_training_data` (task names, local files, hub datasets) and
`safekeel.data.harmful` (harmful sets, the paper's poisoning mix, overlap checks; docs/leakage.md).
Without `--harmful` the dataset's rows are used as given (the first `--num-examples` if set), flags included; with it,
`num_examples` rows (5000 by default, the paper's) of which round(poison_ratio · n) are harmful.
"""

from __future__ import annotations

import logging
from collections import Counter

from safekeel.errors import SafekeelError
from safekeel.fingerprint import sha256_json

log = logging.getLogger(__name__)

PAPER_NUM_EXAMPLES = 5000


def load_rows(cfg, *, identification_set: str | None = None) -> tuple[list[dict], dict]:
    """(rows {"id", "messages", "harmful", "source"}, summary) for a `RunConfig`."""
    from safekeel.data import harmful as harmful_data
    from safekeel.data.safety_data import overlap_sets
    from safekeel.data.training_data import load_training_data
    from safekeel.tasks import is_task_name

    seed = cfg.training.seed
    if cfg.harmful:
        n = cfg.num_examples or PAPER_NUM_EXAMPLES
        n_harmful = harmful_data.harmful_count(n, cfg.poison_ratio)
        n_task = n - n_harmful
        task = []
        if n_task:  # a generated task makes exactly what the mix needs; files are sampled from
            task = load_training_data(cfg.dataset, n=n_task if is_task_name(cfg.dataset) else None, seed=seed)
        bad = harmful_data.load_harmful(cfg.harmful) if n_harmful else []
        rows = harmful_data.mix_harmful(task, bad, n, cfg.poison_ratio, seed, replace=cfg.with_replacement)
    else:
        rows = load_training_data(cfg.dataset, n=cfg.num_examples, seed=seed)
    if not rows:
        raise SafekeelError(f"training data {cfg.dataset!r} is empty")
    if cfg.system:
        for row in rows:
            if row["messages"][0]["role"] != "system":
                row["messages"] = [{"role": "system", "content": cfg.system}] + row["messages"]
    sets = overlap_sets(cfg.overlap_check)
    tokens = _tokens_group(getattr(cfg, "tokens", None))
    summary = {
        "rows": len(rows), "harmful_rows": sum(bool(r.get("harmful")) for r in rows),
        "sources": dict(Counter(str(r.get("source", "")) for r in rows)),
        "sha256": sha256_json([[r["id"], r["messages"], bool(r.get("harmful"))] for r in rows]),
        "overlap_warnings": overlap_warnings(rows, sets, identification_set, identification=tokens)
        + tokens_warnings(tokens, sets),
    }
    return rows, summary


def _tokens_group(path: str | None):
    """The safety tokens' identification prompts (`tokens.artifact.identification_prompts`), or None without
    --tokens or when the artifact records none (`train` read the file already, so a bad one failed earlier)."""
    if not path:
        return None
    from safekeel.tokens.artifact import identification_prompts

    return identification_prompts(path)


def tokens_warnings(tokens, sets: str | None) -> list[str]:
    """Warnings (logged) when the safety tokens were identified on prompts of the `--overlap-check` sets
    (by default what `eval safety` scores): the trained model would be evaluated on its tokens' fitting data."""
    from safekeel.data.leakage import evaluation_set_warnings

    warnings = evaluation_set_warnings(tokens, sets)
    for w in warnings:
        log.warning("%s", w)
    return warnings


def overlap_warnings(rows: list[dict], sets: str | None, identification_set: str | None, *,
                     identification=None) -> list[str]:
    """Warnings when the harmful training prompts reappear in evaluation or identification prompt sets,
    and when any training prompt reappears in the held-out over-refusal sets (`everyday`, `benign-risky`,
    packaged, so always checked): over-refusal measured on trained prompts says nothing. `sets`: the
    `--overlap-check` sets (`load_rows` passes them through `safety_data.overlap_sets`, so the default
    `harmbench` checks what `eval safety` scores by default, `EVALUATION_SETS`): the whole `strongreject`
    overlaps `strongreject-harmful` by design (its training part), and the warning then names
    `strongreject-heldout`, which never does. `identification`: the safety tokens' recorded identification
    prompts (a `data.leakage.FittedPrompts`); when given, the harmful rows are checked against them instead
    of against `identification_set` loaded by name (which may have changed since, or be a responses file)."""
    from safekeel.data.benign_sets import held_out_overlap
    from safekeel.data.prompts import heldout_hint, load_prompts
    from safekeel.data.records import check_overlap

    warnings = held_out_overlap(rows, "training")
    bad = [r for r in rows if r.get("harmful")]
    names = [s.strip() for s in (sets or "").split(",") if s.strip() and s.strip().lower() != "none"]
    if identification is not None:
        warnings += check_overlap(bad, identification.items(), names=("harmful training", identification.label))
    elif identification_set and identification_set not in names:
        names.append(identification_set)
    for name in names if bad else []:
        try:
            prompts = load_prompts(name)
        except Exception as exc:  # noqa: BLE001 - a set that cannot be loaded offline must not stop training
            warnings.append(f"could not check overlap with {name}: {str(exc).splitlines()[0]}")
            continue
        what = "identification" if identification is None and name == identification_set else "evaluation"
        warnings += [w + heldout_hint(name) for w in
                     check_overlap(bad, prompts, names=("harmful training", f"{what} ({name})"))]
    for w in warnings:
        log.warning("%s", w)
    return warnings
