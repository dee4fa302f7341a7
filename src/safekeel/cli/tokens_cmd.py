"""`safekeel tokens identify|show|intervene`."""

from __future__ import annotations

import time
from pathlib import Path

from safekeel.cli.flags import add_flag, add_model_flags, positive_int


def register(sub) -> None:
    p = sub.add_parser("tokens", help="identify, inspect and test an aligned model's safety tokens")
    tsub = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)

    ip = tsub.add_parser("identify", help="find the safety tokens of an aligned model (paper §2.1)")
    add_model_flags(ip, name="aligned")
    add_flag(ip, "base", required=True, help="the base (unaligned) model: hub id, directory, .gguf or packaged")
    add_flag(ip, "base-adapter", default=None, help="LoRA adapter on the base model (e.g. a de-aligned counterpart)")
    # HarmBench-val, not the test split: the test split is what `eval safety` scores, and tokens identified on
    # it would make a PACT model's evaluation partly a test on its fitting data (docs/leakage.md)
    add_flag(ip, "prompts", default="harmbench-val",
             help="harmful prompt set (default harmbench-val: 41 validation behaviours, kept apart from the "
                  "test split that `eval safety` scores); the artifact records the prompts' ids and digests")
    add_flag(ip, "prompt-field", default="prompt")
    add_flag(ip, "responses", default=None,
             help="JSONL/CSV with a `response` field: refusal texts to teacher-force instead of generating")
    add_flag(ip, "k", type=positive_int, default=50, help="number of safety tokens (default 50)")
    add_flag(ip, "limit", type=positive_int, default=None)
    add_flag(ip, "max-new-tokens", type=positive_int, default=64)
    add_flag(ip, "batch-size", type=positive_int, default=4)
    add_flag(ip, "preset", default="paper", choices=["paper", "reference-code"])
    add_flag(ip, "system", default=None, help="optional system prompt")
    add_flag(ip, "output", default="tokens.json")
    ip.set_defaults(func=run_identify)

    sp = tsub.add_parser("show", help="print a safety-token artifact as a table")
    sp.add_argument("path")
    add_flag(sp, "top", type=positive_int, default=10)
    sp.set_defaults(func=run_show)

    vp = tsub.add_parser("intervene", help="boost/suppress safety vs random tokens and measure ASR (paper Table 1)")
    add_model_flags(vp)
    add_flag(vp, "tokens", required=True, help="safety-token artifact (tokens.json)")
    # an evaluation (ASR under interventions), so the test split; it warns when the tokens were identified on it
    add_flag(vp, "prompts", default="harmbench",
             help="harmful prompts the interventions are measured on (default harmbench, the test split); a "
                  "warning when they overlap the tokens' identification prompts")
    add_flag(vp, "prompt-field", default="prompt")
    add_flag(vp, "limit", type=positive_int, default=None)
    add_flag(vp, "alpha", type=float, default=5.0, help="logit bias for the boost setting (default 5)")
    add_flag(vp, "k", type=positive_int, default=None, help="use the top K tokens of the artifact")
    add_flag(vp, "seed", type=int, default=0, help="seed for the random control tokens")
    add_flag(vp, "judge", default="keyword")
    add_flag(vp, "max-new-tokens", type=positive_int, default=64)
    add_flag(vp, "batch-size", type=positive_int, default=8)
    add_flag(vp, "system", default=None)
    add_flag(vp, "output", default="intervention.json")
    vp.set_defaults(func=run_intervene)


def _read_responses(path: str) -> tuple[list[str], list[str] | None]:
    from safekeel.errors import SafekeelError
    from safekeel.rows import read_rows

    rows = read_rows(Path(path))
    if not rows:
        raise SafekeelError(f"--responses file {path} is empty")
    if any("response" not in r for r in rows):
        raise SafekeelError(f"--responses file {path}: every row needs a `response` field")
    prompts = [r["prompt"] for r in rows] if all("prompt" in r for r in rows) else None
    return [str(r["response"]) for r in rows], prompts


def run_identify(args) -> int:
    from safekeel import checks
    from safekeel.data.prompts import load_prompts, prompt_spec
    from safekeel.data.records import PromptRecord
    from safekeel.io_utils import atomic_write_jsonl
    from safekeel.models.loader import load_model
    from safekeel.models.specs import model_spec
    from safekeel.tokens.identify import identify_safety_tokens

    model_spec(args.aligned, "--aligned")
    checks.adapter_dir(args.adapter)
    model_spec(args.base, "--base")
    checks.adapter_dir(args.base_adapter, "--base-adapter")
    if args.responses:
        checks.input_file(args.responses, "--responses")
    else:
        prompt_spec(args.prompts)
    checks.output_file(args.output)
    checks.output_file(Path(args.output).with_suffix(".answers.jsonl"), "--output (its answers file)")
    responses, given_prompts = None, None
    if args.responses:
        responses, given_prompts = _read_responses(args.responses)
        if given_prompts is not None:  # the file carries its own prompts
            prompts = [PromptRecord(f"responses-{i}", p, source=args.responses) for i, p in enumerate(given_prompts)]
            prompts, responses = prompts[: args.limit], responses[: args.limit]
        else:
            prompts = load_prompts(args.prompts, limit=args.limit, prompt_field=args.prompt_field)
    else:
        prompts = load_prompts(args.prompts, limit=args.limit, prompt_field=args.prompt_field)
    if given_prompts is None:  # the prompts come from --prompts
        _warn_evaluation_set(args.prompts)
    t0 = time.perf_counter()
    aligned, tok = load_model(args.aligned, adapter=args.adapter, dtype=args.dtype, device=args.device,
                              trust_remote_code=args.trust_remote_code)
    base, base_tok = load_model(args.base, adapter=args.base_adapter, dtype=args.dtype, device=args.device,
                                trust_remote_code=args.trust_remote_code)
    artifact, rows = identify_safety_tokens(
        aligned, tok, base, base_tok, prompts, k=args.k, preset=args.preset, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, responses=responses, system=args.system,
        prompt_set=args.responses or args.prompts,
    )
    out = artifact.save(args.output)
    answers_path = out.with_suffix(".answers.jsonl")
    atomic_write_jsonl(answers_path, rows)
    kept = artifact.meta["n_kept"]
    print(f"kept {kept} of {len(rows)} answers as refusals; {artifact.meta['n_positions']} answer positions")
    _print_table(artifact, 10)
    print(f"wrote {out} and {answers_path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _warn_evaluation_set(spec: str) -> None:
    """One warning when the identification prompts are an evaluation set (by name; nothing is loaded)."""
    import sys

    from safekeel.data.leakage import is_evaluation_set

    if is_evaluation_set(spec):
        print(f"warning: --prompts {spec} holds prompts `eval safety` scores by default; a model trained with "
              "these tokens would be evaluated on the prompts they were identified on (docs/leakage.md); "
              "identify on harmbench-val, the default", file=sys.stderr)


def _print_table(artifact, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"safety tokens ({artifact.preset}, top {min(top, artifact.k)} of {artifact.k})")
    for col in ("rank", "id", "token", "score", "weight"):
        table.add_column(col, justify="right" if col != "token" else "left")
    for r in range(min(top, artifact.k)):
        table.add_row(str(r + 1), str(artifact.token_ids[r]), repr(artifact.tokens[r]),
                      f"{artifact.scores[r]:.5f}", f"{artifact.weights[r]:.4f}")
    Console().print(table)


def run_show(args) -> int:
    from safekeel.tokens.artifact import SafetyTokens

    _print_table(SafetyTokens.load(args.path), args.top)
    return 0


def _identification_overlap(tokens, path: str, prompts, spec: str) -> list[str]:
    """Warnings (printed, and recorded in the output) when the measured prompts are ones the tokens were
    identified on: boosting tokens fitted to those very refusals says little about held-out prompts."""
    import sys

    from safekeel.data.leakage import tokens_group
    from safekeel.data.records import check_overlap

    group = tokens_group(tokens, Path(path).name)
    warnings = check_overlap(prompts, group.items(), (f"intervention ({spec})", group.label)) if group else []
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return warnings


def run_intervene(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from safekeel import checks
    from safekeel.data.prompts import load_prompts, prompt_spec
    from safekeel.io_utils import atomic_write_json, atomic_write_jsonl
    from safekeel.judges import get_judge
    from safekeel.models.loader import load_model
    from safekeel.models.specs import model_spec
    from safekeel.tokens.artifact import SafetyTokens
    from safekeel.tokens.intervene import run_interventions

    model_spec(args.model)
    checks.adapter_dir(args.adapter)
    checks.finite(args.alpha, "--alpha")
    prompt_spec(args.prompts)
    checks.output_file(args.output)
    checks.output_file(Path(args.output).with_suffix(".samples.jsonl"), "--output (its samples file)")
    tokens = SafetyTokens.load(args.tokens)
    if args.k:
        tokens = tokens.top(args.k)
    judge = get_judge(args.judge)
    prompts = load_prompts(args.prompts, limit=args.limit, prompt_field=args.prompt_field)
    overlap = _identification_overlap(tokens, args.tokens, prompts, args.prompts)
    model, tok = load_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                            trust_remote_code=args.trust_remote_code)
    tokens.check_tokenizer(tok, args.model)
    table, rows = run_interventions(model, tok, prompts, tokens.token_ids, judge, alpha=args.alpha, seed=args.seed,
                                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                    system=args.system)
    view = Table(title=f"attack success rate under interventions (α={args.alpha}, K={tokens.k}, n={len(prompts)})")
    for col in ("setting", "safety tokens", "random tokens"):
        view.add_column(col)
    fmt = lambda s: "n/a" if table[s]["asr"] is None else f"{100 * table[s]['asr']:.1f}%"
    view.add_row("baseline (no intervention)", fmt("baseline"), fmt("baseline"))
    view.add_row(f"boost (logits + {args.alpha})", fmt("safety_boost"), fmt("random_boost"))
    view.add_row("suppress (logits = -1e9)", fmt("safety_suppress"), fmt("random_suppress"))
    Console().print(view)
    out = atomic_write_json(args.output, {"table": table, "alpha": args.alpha, "k": tokens.k, "judge": judge.id,
                                          "model": args.model, "prompts": args.prompts, "n": len(prompts),
                                          "overlap_warnings": overlap})
    atomic_write_jsonl(Path(args.output).with_suffix(".samples.jsonl"), rows)
    print(f"wrote {out}")
    return 0
