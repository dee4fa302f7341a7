"""`safekeel methods`: the registered training defences, read from the registry (safekeel/defences/)."""

from __future__ import annotations

from safekeel.cli.flags import add_flag


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the training defences `safekeel train --method` accepts")
    add_flag(p, "format", default="rich", choices=["rich", "markdown"], help="output format (default rich)")
    p.set_defaults(func=run)


def run(args) -> int:
    from safekeel.defences.registry import describe, markdown_table

    if args.format == "markdown":
        print(markdown_table(), end="")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="training defences (safekeel train --method NAME)")
    for column in ("method", "what it does", "paper", "needs", "LoRA", "full", "multi-GPU"):
        table.add_column(column)
    for r in describe():
        table.add_row(r["name"], r["summary"], r["paper"], "\n".join(r["needs"]), "yes" if r["lora"] else "no",
                      "yes" if r["full"] else "no", r["multi_gpu"])
    Console(width=160).print(table)
    print("options of each: `safekeel train --help` (one group per method)")
    return 0
