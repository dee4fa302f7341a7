"""`safekeel eval safety` and `safekeel eval task`: judged ASR on harmful prompt sets, and task accuracy."""

from __future__ import annotations

from safekeel.cli.flags import add_flag, add_model_flags, positive_int


def _common(p) -> None:
    add_model_flags(p)
    add_flag(p, "output-dir", required=True, help="directory for samples_*.jsonl and results.json (resumable)")
    add_flag(p, "limit", type=positive_int, default=None, help="first N prompts / examples only")
    add_flag(p, "max-new-tokens", type=positive_int, default=256, help="answer length (default 256)")
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
    add_flag(sp, "benchmarks", default="harmbench,strongreject",
             help="comma-separated: harmbench, harmbench-val, strongreject, strongreject-small, FILE, hub id")
    add_flag(sp, "prompt-field", default="prompt", help="field holding the prompt in local files")
    add_flag(sp, "judge", default="keyword",
             help="keyword | llamaguard[:MODEL] | rubric:MODEL | openai:URL[#MODEL] (default keyword)")
    add_flag(sp, "judge-format", default="rubric", choices=["rubric", "llamaguard"],
             help="openai judge only: ask the server the StrongREJECT-style rubric (default) or send the "
                  "conversation to a Llama-Guard server")
    add_flag(sp, "judge-batch-size", type=positive_int, default=8, help="batch size of a local judge model")
    add_flag(sp, "rejudge", action="store_true", help="judge every stored answer again")
    add_flag(sp, "probes", nargs="?", const="all", default=None, metavar="LIST",
             help="add drift probes: all (the default when the flag is given alone) or a comma list of "
                  "over-refusal, roleplay, identity, structure")
    add_flag(sp, "base-model", default=None, help="base model the identity/structure probes compare against")
    add_flag(sp, "base-adapter", default=None, help="adapter on the base model")
    add_flag(sp, "probe-limit", type=positive_int, default=20,
             help="harmful prompts (of the first benchmark) used by the role-play probe (default 20)")
    sp.set_defaults(func=run_safety)

    tp = esub.add_parser("task", help="task accuracy with answer extraction")
    _common(tp)
    add_flag(tp, "task", required=True, help="arith | sentiment | topic | gsm8k | sst2 | agnews | labelled FILE")
    add_flag(tp, "split", default="test", help="task split (default test)")
    add_flag(tp, "seed", type=int, default=0, help="seed of generated tasks (default 0)")
    tp.set_defaults(func=run_task)


def _generator(args, spec: str, adapter: str | None):
    from safekeel.evaluation.generator import LazyGenerator

    return LazyGenerator(spec, adapter=adapter, backend=args.backend, dtype=args.dtype, device=args.device,
                         trust_remote_code=args.trust_remote_code, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, progress=not args.no_progress)


def _arguments(args) -> dict:
    """The parsed command-line arguments, recorded in results.json's `runs`."""
    return {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}


def make_judge(args):
    from safekeel.judges import get_judge

    name = args.judge.partition(":")[0].strip().lower()
    kwargs = {}
    if name in ("llamaguard", "rubric"):
        kwargs = {"device": args.device, "dtype": args.dtype, "batch_size": args.judge_batch_size,
                  "trust_remote_code": args.trust_remote_code}
    elif name == "openai":
        kwargs = {"prompt_format": args.judge_format}
    return get_judge(args.judge, **kwargs)


def run_safety(args) -> int:
    from safekeel.data.prompts import benchmark_name
    from safekeel.evaluation.probes import parse_probes
    from safekeel.evaluation.report import print_safety
    from safekeel.evaluation.safety import SafetyConfig, run_safety_eval

    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    probes = parse_probes(args.probes)
    judge = make_judge(args)
    generator = _generator(args, args.model, args.adapter)
    base = _generator(args, args.base_model, args.base_adapter) if args.base_model else None
    cfg = SafetyConfig(benchmarks, limit=args.limit, prompt_field=args.prompt_field, system=args.system,
                       probes=probes, probe_limit=args.probe_limit, rejudge=args.rejudge,
                       overwrite=args.overwrite, progress=not args.no_progress,
                       command="eval safety", extra={"arguments": _arguments(args)})
    results = run_safety_eval(generator, judge, args.output_dir, cfg, base_generator=base)
    print_safety(results, [benchmark_name(b) for b in benchmarks])
    print(f"wrote {args.output_dir}/results.json ({results['runs'][-1]['timing']['total_s']:.1f} s)")
    return 0


def run_task(args) -> int:
    from safekeel.evaluation.report import print_tasks
    from safekeel.evaluation.task import TaskConfig, resolve_task, run_task_eval

    task = resolve_task(args.task)
    generator = _generator(args, args.model, args.adapter)
    cfg = TaskConfig(split=args.split, limit=args.limit, seed=args.seed, system=args.system,
                     overwrite=args.overwrite, progress=not args.no_progress, command="eval task",
                     extra={"arguments": _arguments(args)})
    results = run_task_eval(generator, task, args.output_dir, cfg, spec=args.task)
    print_tasks(results, [task.name])
    print(f"wrote {args.output_dir}/results.json ({results['runs'][-1]['timing']['total_s']:.1f} s)")
    return 0
