"""`safekeel layers rank`: rank decoder layers by how much skipping each one lowers the refusal rate
(`safekeel.evaluation.layer_rank`); the ranking feeds `train --method freeze --freeze-layers top:N`."""

from __future__ import annotations

import argparse
import sys

from safekeel.cli.flags import add_flag, add_model_flags, positive_int

RANK_DESCRIPTION = (
    "For each decoder layer, skip it (its output = its input) and measure the refusal rate of greedy answers "
    "to a small harmful prompt set; rank the layers by how much skipping each lowers the refusal rate against "
    "the unablated model (ties: lower layer index first). Cost: (number of decoder layers + 1) generation "
    "passes over --limit prompts. Writes the ranking JSON for `safekeel train --method freeze "
    "--freeze-layers top:N --layer-ranking FILE`.")


def register(sub) -> None:
    p = sub.add_parser("layers", help="rank decoder layers by their part in refusals (for --method freeze)")
    lsub = p.add_subparsers(dest="layers_command", metavar="ACTION", required=True)
    rp = lsub.add_parser("rank", help="skip each decoder layer and measure the refusal rate",
                         description=RANK_DESCRIPTION)
    add_model_flags(rp)
    add_flag(rp, "prompts", default="harmbench-val",
             help="harmful prompt set (default harmbench-val; not an evaluation set such as harmbench or "
                  "strongreject, which would leak into training)")
    add_flag(rp, "prompt-field", default="prompt", help="field holding the prompt in local files (default prompt)")
    add_flag(rp, "limit", type=positive_int, default=32, help="first N prompts (default 32)")
    add_flag(rp, "max-new-tokens", type=positive_int, default=48, help="answer length (default 48)")
    add_flag(rp, "batch-size", type=positive_int, default=8, help="prompts per generation batch (default 8)")
    add_flag(rp, "judge", default="keyword", help="refusal judge (default keyword); see `safekeel eval safety --help`")
    add_flag(rp, "system", default=None, help="optional system prompt")
    add_flag(rp, "output", default="ranking.json", help="ranking JSON to write (default ranking.json)")
    add_flag(rp, "top", type=positive_int, default=10, help="layers shown in the table (default 10)")
    add_flag(rp, "no-progress", action="store_true", help="no progress bars")
    rp.set_defaults(func=run_rank)


def _judge(args: argparse.Namespace):
    """The --judge, built (and so validated) without loading a model."""
    from safekeel.judges import get_judge

    name = args.judge.partition(":")[0].strip().lower()
    kwargs = ({"device": args.device, "dtype": args.dtype, "trust_remote_code": args.trust_remote_code}
              if name in ("llamaguard", "rubric") else {})
    return get_judge(args.judge, **kwargs)


def run_rank(args) -> int:
    from safekeel import checks
    from safekeel.data.prompts import prompt_spec
    from safekeel.evaluation.layer_rank import evaluation_set_warning, run_layer_rank
    from safekeel.models.specs import model_spec

    model_spec(args.model)
    checks.adapter_dir(args.adapter)
    prompt_spec(args.prompts)
    checks.output_file(args.output)
    judge = _judge(args)
    warning = evaluation_set_warning(args.prompts)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    ranking = run_layer_rank(args.model, adapter=args.adapter, prompts=args.prompts, prompt_field=args.prompt_field,
                             limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             judge=judge, system=args.system, dtype=args.dtype, device=args.device,
                             trust_remote_code=args.trust_remote_code, output=args.output,
                             progress=not args.no_progress)
    print_ranking(ranking, args.top)
    print(f"wrote {args.output} ({ranking['seconds']:.1f} s)")
    return 0


def print_ranking(ranking: dict, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = ranking["layers"][:top]
    table = Table(title=f"layers of {ranking['model']} by refusal-rate drop when skipped",
                  caption=f"top {len(shown)} of {ranking['n_layers']} layers; baseline refusal rate "
                          f"{100 * ranking['baseline_refusal_rate']:.1f}% (n={ranking['n']}, judge {ranking['judge']})")
    for col in ("rank", "layer", "refusal rate", "drop"):
        table.add_column(col, justify="right")
    for rank, row in enumerate(shown, 1):
        table.add_row(str(rank), str(row["layer"]), f"{100 * row['refusal_rate']:.1f}%",
                      f"{100 * row['drop']:+.1f} pts")
    Console().print(table)
