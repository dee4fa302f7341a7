"""Safety data for the defences that train on or measure against it (`--safety-data`).

Safety data = harmful prompts paired with refusals, as chat rows. Lisa alternates it with the user's
data, SafeGrad and EWC take gradients on it, `token_weighted` up-weights its refusal openings, and
`safekeel layers rank` scores layers on it. Accepted:

- `own-refusals` (the default): the model's *own* refusals to the HarmBench validation prompts (greedy,
  its chat template, judged by the keyword judge, cached like `make-harmful`'s answers). Using the model's
  own words keeps the data on-distribution: a defence that pulls towards someone else's refusal style
  teaches style, not safety. HarmBench-val is disjoint from the HarmBench test split `eval safety` uses by
  default, so the default never fits on the evaluation prompts.
- `own-refusals:PROMPTS`: the same from another prompt set (`safekeel.data.prompts` specs; a StrongREJECT
  set means its training part, `strongreject-train`, so the prompts of `strongreject-heldout` stay out of
  training; `own-refusals:strongreject:all` takes every prompt);
- a chat JSONL / CSV / parquet file or hub dataset (`messages` or prompt/response rows), used as given.

Rows come back as {"id", "messages", "harmful": False, "source"}: the answers are refusals, so the rows
are *safe* training rows (the `harmful` flag marks harmful compliance), as in `data make-safety`.
"""

from __future__ import annotations

import logging

from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

DEFAULT_SAFETY_DATA = "own-refusals"
DEFAULT_REFUSAL_PROMPTS = "harmbench-val"
MIN_ROWS = 4  # fewer refusals than this is not a safety set (an unaligned model refuses almost nothing)
# The prompt sets training data is checked against by default (safety data here, harmful rows by `train
# --overlap-check`, whose default `harmbench` stands for them: `overlap_sets`): those `eval safety` scores by
# default. The whole `strongreject` holds StrongREJECT's training part too, so a run trained on
# `strongreject-harmful` is warned that it would be scored on its own prompts there; with the evaluation on
# `strongreject-heldout` instead, put that name here.
EVALUATION_SETS = "harmbench,strongreject-heldout"


def overlap_sets(overlap_check: str | None) -> str:
    """The prompt sets a run's `--overlap-check` names: its default, `harmbench`, stands for `EVALUATION_SETS`
    (kept as the option's value so that recorded runs and their fingerprints stay as they were); anything
    else as given, None as "none"."""
    return EVALUATION_SETS if (overlap_check or "").strip() == "harmbench" else (overlap_check or "none")


def is_own_refusals(spec: str | None) -> bool:
    return spec is None or str(spec).strip().split(":", 1)[0] == DEFAULT_SAFETY_DATA


def safety_data_spec(spec: str | None, flag: str = "--safety-data") -> str:
    """The spec checked without fetching or loading anything (None: the default)."""
    from safekeel.data.prompts import prompt_spec
    from safekeel.rows import check_local_or_hub

    if spec is None:
        return DEFAULT_SAFETY_DATA
    spec = str(spec).strip()
    if not spec:
        raise SafekeelError(f"{flag} is empty")
    if is_own_refusals(spec):
        _, _, prompts = spec.partition(":")
        if prompts:
            prompt_spec(prompts, flag)
        return spec
    if check_local_or_hub(spec, flag, nonempty=True):
        return spec
    raise SafekeelError(f"{flag}: unknown safety data {spec!r}: use own-refusals[:PROMPTS], a chat .jsonl/.csv/"
                        ".parquet file with harmful prompts and refusals, or a hub dataset id")


def load_safety_data(spec: str | None, model: str, *, dtype: str = "auto", trust_remote_code: bool = False,
                     max_new_tokens: int = 96, progress: bool = True,
                     check_sets: str | None = EVALUATION_SETS) -> tuple[list[dict], dict]:
    """(rows, meta) of the safety data `spec` for the model `model` (a model spec; used by own-refusals).
    `check_sets`: comma-separated prompt sets the safety prompts must not overlap ("none": only the
    packaged over-refusal sets, which are always checked).

    meta: {"spec", "source", "rows", "overlap_warnings", and for own-refusals the generation counts}."""
    from safekeel.data.records import normalise_rows

    spec = safety_data_spec(spec)
    meta: dict = {"spec": spec}
    if is_own_refusals(spec):
        from safekeel.data.model_answers import make_answers
        from safekeel.data.prompts import training_prompts

        prompts = training_prompts(spec.partition(":")[2] or DEFAULT_REFUSAL_PROMPTS)
        made = make_answers(model, prompts, harmful=False, keep="refusals", min_chars=1, dtype=dtype,
                            max_new_tokens=max_new_tokens, progress=progress, trust_remote_code=trust_remote_code)
        raw = [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]} for r in made.rows]
        rows = normalise_rows(raw, made.rows[0]["source"] if made.rows else "refusals")
        meta.update(prompts=prompts, n_generated=made.meta.get("n_generated"), n_refused=made.meta.get("n_refused"),
                    cache=str(made.path))
        if len(rows) < MIN_ROWS:
            raise SafekeelError(f"{model} refused only {len(rows)} of {made.meta.get('n_generated')} {prompts} "
                                f"prompts: too few of its own refusals for --safety-data (at least {MIN_ROWS}); "
                                "is it the aligned model? Pass --safety-data FILE (harmful prompts with refusals)")
    else:
        from safekeel.data.training_data import load_training_data

        rows = load_training_data(spec)
        if not rows:
            raise SafekeelError(f"--safety-data {spec} has no rows")
    for row in rows:
        row["harmful"] = False  # refusals: safe rows, whatever the file said
        row["source"] = f"safety:{row.get('source', '')}"
        row["id"] = f"safety-{row['id']}"
    meta.update(rows=len(rows), overlap_warnings=overlap_with_evaluation(rows, check_sets))
    return rows, meta


def overlap_with_evaluation(rows: list[dict], sets: str | None = EVALUATION_SETS) -> list[str]:
    """Warnings (logged) when safety prompts reappear in the evaluation prompt sets or the held-out
    over-refusal sets: a defence fitted on them would be scored on what it trained on."""
    from safekeel.data.benign_sets import held_out_overlap
    from safekeel.data.prompts import heldout_hint, load_prompts
    from safekeel.data.records import check_overlap

    warnings = held_out_overlap(rows, "safety data")
    for name in [x.strip() for x in (sets or "").split(",") if x.strip() and x.strip().lower() != "none"]:
        try:
            prompts = load_prompts(name)
        except Exception as exc:  # noqa: BLE001 - a set that cannot be loaded offline must not stop training
            warnings.append(f"could not check the safety data's overlap with {name}: {str(exc).splitlines()[0]}")
            continue
        warnings += [w + heldout_hint(name) for w in
                     check_overlap(rows, prompts, names=("safety data", f"evaluation ({name})"))]
    for w in warnings:
        log.warning("%s", w)
    return warnings
