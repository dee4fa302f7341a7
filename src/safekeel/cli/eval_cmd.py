"""`safekeel eval safety` and `safekeel eval task`: judged ASR on harmful prompt sets, and task accuracy.

Every argument is checked first (`safekeel.checks`, the judge spec, the task), in a second and without
downloading anything, so a typo never costs a model load. `eval safety` exits 1 (results and samples
still written) when a benchmark's share of judge errors exceeds --max-judge-errors, or when it has no
judged answer at all (for each judge, when --judge lists several): an ASR over nothing must never look
like a pass. Bad input exits 2.
"""

from __future__ import annotations

import sys

from safekeel.cli.flags import add_flag, add_model_flags, positive_int
from safekeel.cli.gate_cmd import fraction
from safekeel.errors import SafekeelError
from safekeel.evaluation.stats import MAX_JUDGE_ERRORS


def _common(p, max_new_tokens_help: str = "answer length (default 256)", max_new_tokens: int | None = 256) -> None:
    add_model_flags(p)
    add_flag(p, "output-dir", required=True, help="directory for samples_*.jsonl and results.json (resumable)")
    add_flag(p, "limit", type=positive_int, default=None, help="first N prompts / examples only")
    add_flag(p, "max-new-tokens", type=positive_int, default=max_new_tokens, help=max_new_tokens_help)
    add_flag(p, "batch-size", type=positive_int, default=None,
             help="prompts per batch, saved after each (default 8 for hf, 256 for vllm)")
    add_flag(p, "backend", default="hf", choices=["hf", "vllm"], help="generation backend (vllm if installed)")
    add_flag(p, "system", default=None, help="optional system prompt")
    add_flag(p, "overwrite", action="store_true", help="regenerate everything; allow a different model in the directory")
    add_flag(p, "no-progress", action="store_true", help="no progress bars")


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate safety (judged ASR, probes) and task accuracy")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    sp = esub.add_parser("safety", help="attack success rate on harmful prompt sets, judged")
    _common(sp)
    add_flag(sp, "benchmarks", default="harmbench,strongreject-heldout",
             help="comma-separated: harmbench, harmbench-val, strongreject, strongreject-small, FILE, hub id")
    add_flag(sp, "prompt-field", default="prompt", help="field holding the prompt in local files")
    add_flag(sp, "judge", default="keyword",
             help="keyword | keyword:gcg (GCG's refusal list, as in the literature) | llamaguard[:MODEL] | "
                  "rubric:MODEL | openai:URL[#MODEL] (default keyword); a comma "
                  "list (keyword,rubric:MODEL) judges every answer with each: the first gives the ASR, the "
                  "others their own ASR and agreement (Cohen's kappa) with it; a comma followed by a judge name "
                  "starts the next judge")
    add_flag(sp, "judge-format", default=None, choices=["rubric", "llamaguard"],
             help="openai judge only: ask the server the StrongREJECT-style rubric (the default) or send the "
                  "conversation to a Llama-Guard server")
    add_flag(sp, "judge-batch-size", type=positive_int, default=8, help="batch size of a local judge model")
    add_flag(sp, "rejudge", action="store_true",
             help="judge every stored answer again, by every judge (errors are always re-judged)")
    add_flag(sp, "max-judge-errors", type=fraction, default=MAX_JUDGE_ERRORS, metavar="SHARE",
             help="exit 1 when more than this share of a benchmark's verdicts are judge errors (results are "
                  f"still written; default {MAX_JUDGE_ERRORS:g}); a benchmark with no judged answer always fails")
    add_flag(sp, "probes", nargs="?", const="all", default=None, metavar="LIST",
             help="probes answered beside the benchmarks: by default the over-refusal sets (everyday: 135 "
                  "everyday requests; over-refusal: 52 benign prompts that look risky); none; all (when the "
                  "flag is given alone); or a comma list of everyday, over-refusal, roleplay, identity, structure")
    add_flag(sp, "base-model", default=None, help="base model the identity/structure probes compare against")
    add_flag(sp, "base-adapter", default=None, help="adapter on the base model")
    add_flag(sp, "probe-limit", type=positive_int, default=20,
             help="harmful prompts (of the first benchmark) used by the role-play probe (default 20)")
    add_flag(sp, "tokens", default=None, metavar="FILE",
             help="a safety-token artifact: warn when the benchmarks share prompts with its identification "
                  "prompts (an adapter or model trained by `safekeel train` is checked against what its run "
                  "recorded without this; docs/leakage.md)")
    sp.set_defaults(func=run_safety)

    tp = esub.add_parser("task", help="task accuracy with answer extraction")
    _common(tp, "answer length (default: the task's, enough for a worked solution to finish: 512 for arith, "
                "gsm8k and numeric files, 64 for label tasks); the share of answers cut off is reported",
            max_new_tokens=None)
    add_flag(tp, "task", required=True, help="arith | sentiment | topic | gsm8k | sst2 | agnews | labelled FILE")
    add_flag(tp, "split", default="test", help="task split (default test)")
    add_flag(tp, "seed", type=int, default=0, help="seed of generated tasks (default 0)")
    tp.set_defaults(func=run_task)


def _generator(args, spec: str, adapter: str | None):
    from safekeel.generators import LazyGenerator

    return LazyGenerator(spec, adapter=adapter, backend=args.backend, dtype=args.dtype, device=args.device,
                         trust_remote_code=args.trust_remote_code, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, progress=not args.no_progress)


def _arguments(args) -> dict:
    """The parsed command-line arguments, recorded in results.json's `runs`."""
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}


def make_judges(args) -> list:
    """The judges of --judge (the primary first), built (and so validated) without loading a model or
    contacting a server."""
    from safekeel.judges.registry import build_judges

    return build_judges(args.judge, judge_format=args.judge_format, device=args.device, dtype=args.dtype,
                        batch_size=args.judge_batch_size, trust_remote_code=args.trust_remote_code)


def _check_models(args, *, base: bool = False) -> None:
    from safekeel import checks
    from safekeel.models.specs import model_spec

    model_spec(args.model, "--model")
    checks.adapter_dir(args.adapter, "--adapter")
    if base:
        if args.base_adapter and not args.base_model:
            raise SafekeelError("--base-adapter needs --base-model")
        if args.base_model:
            model_spec(args.base_model, "--base-model")
            checks.adapter_dir(args.base_adapter, "--base-adapter")


def run_safety(args) -> int:
    from safekeel import checks
    from safekeel.data.prompts import prompt_spec
    from safekeel.evaluation.probes import parse_probes
    from safekeel.evaluation.report import print_safety
    from safekeel.evaluation.safety import (
        SafetyConfig,
        benchmark_names,
        fitted_prompts,
        judge_error_warnings,
        run_safety_eval,
    )

    checks.output_dir(args.output_dir, "--output-dir")
    _check_models(args, base=True)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for spec in benchmarks:
        prompt_spec(spec, "--benchmarks")
    names = benchmark_names(benchmarks)
    probes = parse_probes(args.probes)
    judges = make_judges(args)
    fitted = fitted_prompts(args.tokens, args.adapter, args.model)
    generator = _generator(args, args.model, args.adapter)
    base = _generator(args, args.base_model, args.base_adapter) if args.base_model else None
    cfg = SafetyConfig(benchmarks, limit=args.limit, prompt_field=args.prompt_field, system=args.system,
                       probes=probes, probe_limit=args.probe_limit, rejudge=args.rejudge,
                       overwrite=args.overwrite, progress=not args.no_progress,
                       command="eval safety", extra={"arguments": _arguments(args),
                                                     "overlap_checked": [g.label for g in fitted]},
                       fitted=fitted)
    results = run_safety_eval(generator, judges, args.output_dir, cfg, base_generator=base)
    print_safety(results, names)
    print(f"wrote {args.output_dir}/results.json ({results['runs'][-1]['timing']['total_s']:.1f} s)")
    from safekeel.training.model_card import update_after_eval

    update_after_eval(args.model, args.adapter, args.output_dir)  # a trained dir's README.md shows them
    warnings = judge_error_warnings(results, names, args.max_judge_errors)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 1 if warnings else 0


def run_task(args) -> int:
    from safekeel import checks
    from safekeel.evaluation.report import print_tasks
    from safekeel.evaluation.task import TaskConfig, resolve_task, run_task_eval

    checks.output_dir(args.output_dir, "--output-dir")
    task = resolve_task(args.task)
    _check_models(args)
    args.max_new_tokens = args.max_new_tokens or task.max_new_tokens
    generator = _generator(args, args.model, args.adapter)
    cfg = TaskConfig(split=args.split, limit=args.limit, seed=args.seed, system=args.system,
                     overwrite=args.overwrite, progress=not args.no_progress, command="eval task",
                     extra={"arguments": _arguments(args)})
    results = run_task_eval(generator, task, args.output_dir, cfg, spec=args.task)
    print_tasks(results, [task.name])
    entry = results["tasks"][task.name]
    if entry.get("cut_off"):
        print(f"warning: {entry['cut_off']} of {entry['n']} answers used all {args.max_new_tokens} new tokens "
              "without finishing; their last number is often an intermediate one: raise --max-new-tokens",
              file=sys.stderr)
    print(f"wrote {args.output_dir}/results.json ({results['runs'][-1]['timing']['total_s']:.1f} s)")
    from safekeel.training.model_card import update_after_eval

    update_after_eval(args.model, args.adapter, args.output_dir)  # a trained dir's README.md shows them
    return 0
