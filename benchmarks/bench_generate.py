"""Generation throughput: batched vs one prompt at a time (HF backend), and vLLM vs HF on a GPU.

    python benchmarks/bench_generate.py                       # packaged SmolLM2 on CPU, 16 HarmBench prompts
    python benchmarks/bench_generate.py --model tiny --n 8    # seconds-long smoke run on a tiny random model
    python benchmarks/bench_generate.py --backends hf,vllm --device cuda --n 256 --batch-sizes 1,16,64

For every batch size it times greedy generation of the same N prompts (after one warm-up prompt),
counts generated tokens (re-tokenising the decoded answers), and checks that the answers equal the batch-size-1 answers (greedy with left
padding should not change them; a mismatch is reported, not hidden). Prints a table and writes JSON.
This is a benchmark, not a test: run it by hand and paste the table into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def _load(args):
    if args.model == "tiny":
        from safekeel.testing import build_model, build_tokenizer

        tok = build_tokenizer()
        return build_model(tok, seed=0), tok
    from safekeel.models.loader import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def _prompts(args) -> list[str]:
    try:
        from safekeel.data.prompts import load_prompts

        return [p.prompt for p in load_prompts(args.prompts, limit=args.n)]
    except Exception as exc:  # noqa: BLE001 - packaged data missing offline: fall back to varied built-in prompts
        print(f"(prompt set {args.prompts!r} unavailable: {exc}; using built-in prompts)")
        base = ["How do I pick a lock?", "Write a short poem about the sea.", "Explain how vaccines work.",
                "Give me three tips for a job interview, with an example for each one of them.",
                "What is 17 * 23?", "Summarise the causes of the First World War in a paragraph."]
        return [base[i % len(base)] + (" Please be brief." if i >= len(base) else "") for i in range(args.n)]


def bench_hf(model, tok, texts, batch_sizes, max_new_tokens) -> list[dict]:
    from safekeel.generation import generate

    generate(model, tok, texts[:1], max_new_tokens=4, batch_size=1, progress=False)  # warm-up
    rows, reference = [], None
    for bs in batch_sizes:
        t0 = time.perf_counter()
        answers = generate(model, tok, texts, max_new_tokens=max_new_tokens, batch_size=bs, progress=False)
        secs = time.perf_counter() - t0
        tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
        reference = reference if reference is not None else answers
        same = sum(a == b for a, b in zip(answers, reference)) / len(answers)
        rows.append({"backend": "hf", "batch_size": bs, "prompts": len(texts), "seconds": round(secs, 2),
                     "new_tokens": tokens, "tokens_per_s": round(tokens / secs, 1),
                     "prompts_per_s": round(len(texts) / secs, 3), "same_as_first": round(same, 3)})
    base_s = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = round(base_s / r["seconds"], 2)
    return rows


def bench_vllm(args, tok, texts) -> list[dict]:
    from safekeel.evaluation.generator import VLLMGenerator

    gen = VLLMGenerator(args.model, tok, max_new_tokens=args.max_new_tokens)
    gen.generate(texts[:1])
    t0 = time.perf_counter()
    answers = gen.generate(texts)
    secs = time.perf_counter() - t0
    tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return [{"backend": "vllm", "batch_size": len(texts), "prompts": len(texts), "seconds": round(secs, 2),
             "new_tokens": tokens, "tokens_per_s": round(tokens / secs, 1),
             "prompts_per_s": round(len(texts) / secs, 3)}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model spec, or 'tiny' for a random tiny model")
    ap.add_argument("--prompts", default="harmbench")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--backends", default="hf", help="hf and/or vllm (vllm needs a GPU and the vllm package)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--output", default="benchmarks/bench_generate.json")
    args = ap.parse_args()

    from safekeel.chat import format_prompt

    t0 = time.perf_counter()
    model, tok = _load(args)
    load_s = time.perf_counter() - t0
    texts = [format_prompt(tok, p) for p in _prompts(args)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    if "hf" in args.backends:
        rows += bench_hf(model, tok, texts, batch_sizes, args.max_new_tokens)
    if "vllm" in args.backends:
        del model
        rows += bench_vllm(args, tok, texts)
    env = {"model": args.model, "device": args.device, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "max_new_tokens": args.max_new_tokens, "load_s": round(load_s, 2)}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"greedy generation, {args.model}, {len(texts)} prompts × ≤{args.max_new_tokens} tokens")
    cols = ["backend", "batch_size", "seconds", "new_tokens", "tokens_per_s", "prompts_per_s", "speedup", "same_as_first"]
    heads = ["backend", "batch", "s", "tokens", "tok/s", "prompts/s", "speedup", "same as bs 1"]
    for h in heads:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*(str(r.get(c, "-")) for c in cols))
    Console().print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
