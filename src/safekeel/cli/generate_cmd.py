"""`safekeel generate`: batched greedy answers for a prompt set, printed and saved as JSONL."""

from __future__ import annotations

import time

from safekeel.cli.flags import add_flag, add_model_flags, positive_int


def register(sub) -> None:
    p = sub.add_parser("generate", help="batched greedy answers for a prompt set (printed and saved as JSONL)")
    add_model_flags(p)
    add_flag(p, "prompts", required=True, help="prompt set: harmbench, strongreject, a file, a hub id")
    add_flag(p, "prompt-field", default="prompt", help="field holding the prompt in a local file")
    add_flag(p, "limit", type=positive_int, default=None, help="first N prompts only")
    add_flag(p, "max-new-tokens", type=positive_int, default=64)
    add_flag(p, "batch-size", type=positive_int, default=8)
    add_flag(p, "system", default=None, help="optional system prompt")
    add_flag(p, "output", default="generations.jsonl", help="JSONL file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from safekeel import checks
    from safekeel.chat import format_prompt
    from safekeel.data.prompts import load_prompts, prompt_spec
    from safekeel.generation import generate
    from safekeel.io_utils import atomic_write_jsonl
    from safekeel.models.loader import load_model
    from safekeel.models.specs import model_spec

    # every cheap check before the prompt set or the model is fetched
    model_spec(args.model)
    checks.adapter_dir(args.adapter)
    prompt_spec(args.prompts)
    checks.output_file(args.output)
    prompts = load_prompts(args.prompts, limit=args.limit, prompt_field=args.prompt_field)
    t0 = time.perf_counter()
    model, tok = load_model(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                            trust_remote_code=args.trust_remote_code)
    t_load = time.perf_counter() - t0
    texts = [format_prompt(tok, p.prompt, args.system) for p in prompts]
    t1 = time.perf_counter()
    answers = generate(model, tok, texts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    t_gen = time.perf_counter() - t1
    rows = [{"id": p.id, "category": p.category, "prompt": p.prompt, "response": a} for p, a in zip(prompts, answers)]
    for r in rows:
        print(f"--- [{r['id']}] {r['prompt'][:100]!r}\n{r['response']}\n")
    atomic_write_jsonl(args.output, rows)
    print(f"{len(rows)} answers -> {args.output} (load {t_load:.1f} s, generation {t_gen:.1f} s)")
    return 0
