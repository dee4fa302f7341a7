"""`safekeel data`: make harmful compliance data, write a task's examples, mix harmful rows into task data.

Training-side builders never take StrongREJECT's held-out prompts unless asked (`safekeel.data.prompts`,
"StrongREJECT's fixed split"): `make-safety --prompts strongreject` uses `strongreject-train`, `make-harmful`
answers all 313 prompts (its cache) but copies only the training part to `--output`, and `mix --harmful
strongreject-harmful` draws from that part; `strongreject:all` / `strongreject-harmful:all` take every prompt.

    safekeel data list
    safekeel data make-harmful [--model smollm2-135m-instruct] [--prompts strongreject] [--limit N]
    safekeel data make-task --task arith --split train --n 500 --output arith.jsonl
    safekeel data make-safety [--model M] [--prompts harmbench-val] [--instructions instructions] --output F
    safekeel data mix --task arith --harmful strongreject-harmful --poison-ratio 0.1 --num-examples 5000
"""

from __future__ import annotations

import logging
import time

from safekeel.cli.flags import add_flag, add_model_flags, positive_int

log = logging.getLogger(__name__)


def _ratio(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def register(sub) -> None:
    p = sub.add_parser("data", help="make harmful data, write task examples, mix harmful rows into task data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    ls = dsub.add_parser("list", help="the tasks and harmful sets this command knows")
    ls.set_defaults(func=run_list)

    h = dsub.add_parser("make-harmful", help="harmful compliance answers of an unaligned model, generated once and cached")
    add_model_flags(h, required=False)
    add_flag(h, "prompts", default="strongreject",
             help="harmful prompt set (default strongreject: answers to all 313 prompts are made and cached, the "
                  "cache `--harmful strongreject-harmful` reads; --output copies only those to StrongREJECT's 193 "
                  "training prompts, strongreject:all copies all)")
    add_flag(h, "limit", type=positive_int, default=None, help="first N prompts only")
    add_flag(h, "max-new-tokens", type=positive_int, default=128)
    add_flag(h, "batch-size", type=positive_int, default=8)
    add_flag(h, "judge", default="keyword", help="judge that drops refusals (default: refusal-prefix keywords)")
    add_flag(h, "system", default=None, help="optional system prompt for generation")
    add_flag(h, "min-chars", type=int, default=40, help="drop answers shorter than this")
    add_flag(h, "force", action="store_true", help="regenerate even when the cache has this set")
    add_flag(h, "output", default=None, help="also write the rows to this JSONL file")
    h.set_defaults(func=run_make_harmful, model=None)

    t = dsub.add_parser("make-task", help="write a task's examples as chat-messages JSONL")
    add_flag(t, "task", required=True, help="arith, sentiment, topic, gsm8k, sst2, agnews or a labelled file")
    add_flag(t, "split", default="train", choices=["train", "test"])
    add_flag(t, "n", type=positive_int, default=None, help="number of examples (default: the task's default)")
    add_flag(t, "seed", type=int, default=0)
    add_flag(t, "system", default=None, help="optional system prompt put in every row")
    add_flag(t, "output", default=None, help="JSONL file to write (default TASK-SPLIT.jsonl)")
    t.set_defaults(func=run_make_task)

    a = dsub.add_parser("make-safety", help="safety-SFT rows to make an aligned counterpart of an unaligned model: "
                                           "refusals on harmful prompts + the model's own answers to benign "
                                           "instructions + benign task rows")
    add_model_flags(a, required=False)
    add_flag(a, "prompts", default="harmbench-val",
             help="harmful prompts to answer with refusals (default harmbench-val; strongreject means its training "
                  "part, strongreject-train: the held-out prompts stay out; strongreject:all for every prompt)")
    add_flag(a, "limit", type=positive_int, default=None, help="first N harmful prompts only")
    add_flag(a, "refusal-repeats", type=positive_int, default=1,
             help="each refusal row this many times (each with a fresh refusal text; default 1)")
    add_flag(a, "instructions", default="instructions",
             help="benign instructions the model (--model, default the packaged SmolLM2) answers itself, so the "
                  "counterpart keeps its helpfulness: a prompt set (default: the packaged `instructions`, 208) "
                  "or none")
    add_flag(a, "n-instructions", type=positive_int, default=None,
             help="first N instructions only (the packaged set is ordered by topic, 16 per topic)")
    add_flag(a, "max-new-tokens", type=positive_int, default=128, help="answer length for the instructions")
    add_flag(a, "batch-size", type=positive_int, default=8)
    add_flag(a, "system", default=None, help="optional system prompt for generating the answers")
    add_flag(a, "benign", default="arith", help="benign task whose train rows are mixed in (default arith)")
    add_flag(a, "n-benign", type=int, default=100, help="benign task rows (default 100; 0 for none)")
    add_flag(a, "seed", type=int, default=0)
    add_flag(a, "output", default="safety-sft.jsonl", help="JSONL file to write (a .meta.json with counts goes beside it)")
    a.set_defaults(func=run_make_safety, model=None)

    m = dsub.add_parser("mix", help="NUM rows of task data with round(RATIO * NUM) harmful rows, seeded and flagged")
    add_flag(m, "task", "--dataset", required=True, help="task name or training-data file/hub id (benign rows)")
    add_flag(m, "harmful", required=True, help="strongreject-harmful (StrongREJECT's training part; "
                                                "strongreject-harmful:all every prompt), advbench, beavertails or "
                                                "a prompt/response file")
    add_flag(m, "poison-ratio", type=_ratio, default=0.1, help="share of harmful rows (paper: 0.1)")
    add_flag(m, "num-examples", type=positive_int, default=5000, help="total rows (paper: 5000)")
    add_flag(m, "seed", type=int, default=0)
    add_flag(m, "with-replacement", action="store_true", help="repeat rows when a source is too small")
    add_flag(m, "system", default=None, help="optional system prompt put in every row")
    add_flag(m, "check-overlap", action="append", default=[], metavar="PROMPTS",
             help="warn when harmful prompts appear in this prompt set (repeatable), e.g. harmbench")
    add_flag(m, "output", default="mix.jsonl", help="JSONL file to write (a .meta.json with counts goes beside it)")
    m.set_defaults(func=run_mix)


def run_list(args) -> int:
    from safekeel.data.harmful import HARMFUL_SETS
    from safekeel.tasks import OFFLINE_TASKS, TASKS, get_task

    print("tasks (train and test splits; also any labelled .jsonl/.csv/.parquet with prompt and answer):")
    for name in TASKS:
        where = "offline, generated" if name in OFFLINE_TASKS else "hub, online"
        print(f"  {name:<12} {get_task(name).description} [{where}]")
    print("harmful sets (for `mix --harmful` and as training data):")
    for name, text in HARMFUL_SETS.items():
        print(f"  {name:<21} {text}")
    from safekeel.data.benign_sets import BENIGN_SETS

    print("benign prompt sets (packaged; `make-safety --instructions`, over-refusal in `eval safety`):")
    for name, (_, text) in BENIGN_SETS.items():
        print(f"  {name:<21} {text}")
    from safekeel.data.prompts import HARMFUL_PROMPT_SETS

    print("harmful prompt sets (packaged; `eval safety --benchmarks`, `--prompts`, `--monitor-prompts`, ...):")
    for name, text in HARMFUL_PROMPT_SETS.items():
        print(f"  {name:<27} {text}")
    return 0


def run_make_harmful(args) -> int:
    from safekeel import checks
    from safekeel.data.harmful import DEFAULT_MODEL, make_harmful, training_part
    from safekeel.data.prompts import prompt_spec, whole_strongreject
    from safekeel.io_utils import atomic_write_jsonl

    prompt_spec(args.prompts)
    if args.output:
        checks.output_file(args.output)
    t0 = time.perf_counter()
    # a whole StrongREJECT set is answered whole (one cache, shared with `strongreject-harmful`); the copy
    # written to --output is its training part unless `:all` asks for every prompt
    whole = whole_strongreject(args.prompts)
    only_training = whole is not None and not args.prompts.strip().endswith(":all")
    data = make_harmful(args.model or DEFAULT_MODEL, whole or args.prompts, limit=args.limit,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, judge=args.judge,
                        system=args.system, adapter=args.adapter, dtype=args.dtype, device=args.device,
                        min_chars=args.min_chars, force=args.force,
                        trust_remote_code=args.trust_remote_code)
    meta = data.meta
    how = "read from the cache" if data.cached else f"generated in {time.perf_counter() - t0:.0f} s"
    print(f"{len(data.rows)} harmful compliance pairs ({how}) -> {data.path}")
    if "n_generated" in meta:
        print(f"  kept {meta['n_kept']} of {meta['n_generated']} answers: {meta['n_refused']} refusals and "
              f"{meta['n_short']} too-short answers dropped")
    rows = training_part(data.rows) if whole else data.rows
    if whole:
        tail = f" and out of the copy (--prompts {whole}:all copies them too)" if args.output and only_training else ""
        print(f"  {len(rows)} of them answer StrongREJECT's training prompts ({whole}-train, what training uses); "
              f"the {len(data.rows) - len(rows)} answers to {whole}-heldout prompts stay out of training{tail}")
    if args.output:
        atomic_write_jsonl(args.output, rows if only_training else data.rows)
        print(f"  copy -> {args.output}")
    return 0


def run_make_task(args) -> int:
    from safekeel import checks
    from safekeel.data.records import task_rows
    from safekeel.io_utils import atomic_write_jsonl
    from safekeel.tasks import get_task

    task = get_task(args.task)
    output = args.output or f"{task.name}-{args.split}.jsonl"
    checks.output_file(output)
    examples = task.examples(args.split, args.n, args.seed)
    atomic_write_jsonl(output, task_rows(examples, task.name, system=args.system))
    print(f"{len(examples)} {task.name} {args.split} examples (seed {args.seed}) -> {output}")
    return 0


def run_make_safety(args) -> int:
    from safekeel import checks
    from safekeel.data.benign_sets import held_out_overlap
    from safekeel.data.harmful import DEFAULT_MODEL
    from safekeel.data.prompts import load_prompts, prompt_spec, training_prompts
    from safekeel.data.refusals import helpful_rows, safety_sft_rows, safety_summary
    from safekeel.data.training_data import load_training_data
    from safekeel.errors import SafekeelError
    from safekeel.io_utils import atomic_write_json, atomic_write_jsonl
    from safekeel.models.specs import model_spec

    prompt_spec(args.prompts)
    checks.output_file(args.output)
    checks.output_file(f"{args.output}.meta.json", "--output (its .meta.json)")
    if args.n_benign < 0:
        raise SafekeelError(f"--n-benign must be >= 0, got {args.n_benign}")
    use_instructions = str(args.instructions).strip().lower() not in ("none", "")
    model = args.model or DEFAULT_MODEL
    if use_instructions:
        prompt_spec(args.instructions, "--instructions")
        model_spec(model)
        checks.adapter_dir(args.adapter)
    refusal_prompts = training_prompts(args.prompts)  # StrongREJECT: its training part (module docstring)
    prompts = load_prompts(refusal_prompts, limit=args.limit)
    benign = load_training_data(args.benign, n=args.n_benign, seed=args.seed) if args.n_benign > 0 else []
    answers = meta = None
    if use_instructions:
        for warning in held_out_overlap(load_prompts(args.instructions, limit=args.n_instructions),
                                        "training instruction", "{}"):
            log.warning("warning: %s", warning)
        answers, meta = helpful_rows(model, args.instructions, limit=args.n_instructions,
                                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                     system=args.system, adapter=args.adapter, dtype=args.dtype, device=args.device,
                                     trust_remote_code=args.trust_remote_code)
    rows = safety_sft_rows(prompts, benign + (answers or []), seed=args.seed, refusal_repeats=args.refusal_repeats)
    summary = safety_summary(rows)
    atomic_write_jsonl(args.output, rows)
    atomic_write_json(f"{args.output}.meta.json", {
        **summary, "prompts": refusal_prompts, "refusal_repeats": args.refusal_repeats, "benign": args.benign,
        "instructions": args.instructions if use_instructions else None, "answers": meta, "seed": args.seed})
    parts = [f"{summary['refusal']} refusals ({refusal_prompts})"]
    if answers is not None:
        parts.append(f"{len(answers)} answers of {model} to {args.instructions} (kept {meta['n_kept']} of "
                     f"{meta['n_generated']}: {meta['n_refused']} refusals, {meta['n_short']} too short dropped)")
    parts.append(f"{len(benign)} {args.benign} rows")
    print(" + ".join(parts) + f" -> {args.output}")
    return 0


def run_mix(args) -> int:
    from safekeel import checks
    from safekeel.data.harmful import (
        check_harmful_spec,
        harmful_count,
        load_harmful,
        mix_harmful,
        mix_summary,
    )
    from safekeel.data.prompts import benchmark_name, heldout_hint, load_prompts, prompt_spec
    from safekeel.data.records import check_overlap, normalise_rows, row_prompt
    from safekeel.data.training_data import load_training_data
    from safekeel.io_utils import atomic_write_json, atomic_write_jsonl
    from safekeel.tasks import is_task_name

    checks.output_file(args.output)
    checks.output_file(f"{args.output}.meta.json", "--output (its .meta.json)")
    check_harmful_spec(args.harmful)
    for spec in args.check_overlap:
        prompt_spec(spec, "--check-overlap")
    n_harmful = harmful_count(args.num_examples, args.poison_ratio)
    n_task = args.num_examples - n_harmful
    task_rows = []
    if n_task:  # a generated task makes exactly the rows needed; files and hub sets are sampled from
        task_rows = load_training_data(args.task, n=n_task if is_task_name(args.task) else None, seed=args.seed,
                                       system=args.system)
    harmful_rows = normalise_rows(load_harmful(args.harmful), benchmark_name(args.harmful), harmful=True,
                                  system=args.system) if n_harmful else []
    rows = mix_harmful(task_rows, harmful_rows, args.num_examples, args.poison_ratio, args.seed,
                       replace=args.with_replacement)
    for spec in args.check_overlap:
        for warning in check_overlap([row_prompt(r) for r in harmful_rows], load_prompts(spec),
                                     ("harmful training", benchmark_name(spec))):
            log.warning("warning: %s", warning + heldout_hint(spec))
    atomic_write_jsonl(args.output, rows)
    summary = mix_summary(rows)
    atomic_write_json(f"{args.output}.meta.json", {**summary, "task": args.task, "harmful_source": args.harmful,
                                                   "seed": args.seed, "with_replacement": args.with_replacement})
    print(f"{summary['num_examples']} rows ({summary['benign']} {args.task}, {summary['harmful']} harmful from "
          f"{args.harmful}, seed {args.seed}) -> {args.output}")
    return 0
