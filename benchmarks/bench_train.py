"""Training cost of SFT, PACT (live reference / reference cache) and the authors' naive PACT.

Same model, same data, same batch, one process at a time (no DDP): by default each mode runs in its own
fresh process, one after another, so each mode's peak memory is its own (`--in-process` runs them all in
this process instead) (CPU: peak RSS sampled every 5 ms minus the RSS of the bare process; GPU:
torch.cuda.max_memory_allocated over the training steps, weights included).

Modes:
  sft         cross-entropy on the answer tokens (the baseline every ratio is relative to)
  pact-live   PACT, reference K-logits computed every step (LoRA: the same model with adapters off)
  pact-cache  PACT, reference K-logits read from the cache; the one-off cache pass is timed separately
  naive       PACT as the authors' code computes it: a second full model copy and two full-vocabulary
              reference forwards per step, gathered at the safety tokens afterwards
  kl          the full-vocabulary KL baseline (live reference, full-vocabulary reference logits)
  constrained-sft  Qi et al.'s token-wise constrained SFT (live reference answer-token log-probs)
  safelora, asft, lisa, safegrad, ewc, freeze, token-weighted
              the other defences (docs/defences.md), with a refusal set as --safety-data and, for the two
              that need --base, a perturbed copy of the model as the "unaligned" counterpart (the cost
              does not depend on which weights it holds)

Reported per mode: seconds per step (median over the measured steps after warm-up, pooled over
`--repeats` rounds of all modes), tokens/s, peak memory, ratios to SFT, the one-off seconds (the set-up
before the first step beyond SFT's: the reference cache pass, a Fisher estimate, the alignment subspace;
plus `after_train`, e.g. SafeLoRA's projection), and an end-to-end ratio for a whole run (--examples rows
× --epochs, plus the one-off seconds; also for one epoch).

`--monitor-overhead` measures the safety monitor instead (training/monitor.py): one mode (`--monitor-mode`,
default pact-cache) trained in this process with the monitor off, on without its over-refusal probe
(`--monitor-benign-prompts none`) and on at its defaults, in turn (`--repeats` rounds), on a generated set
of harmful-looking prompts (and the packaged benign instructions). Reported: the whole `train()` time
with / without (the start probe and every periodic probe included), the seconds per probe
(`monitor/seconds`), and the overhead at the default interval projected from them: probe seconds /
(interval × seconds per step).

    python benchmarks/bench_train.py --tiny --steps 4                     # smoke test (seconds)
    python benchmarks/bench_train.py --model smollm2-135m-instruct        # CPU figures
    python benchmarks/bench_train.py --random-config qwen2.5-1.5b --bf16  # GPU, random weights, no download
    python benchmarks/bench_train.py --random-config smollm2-135m --monitor-overhead --monitor-steps 2 \
        --warmup 1 --steps 4 --batch-size 4 --prompt-tokens 48 --answer-tokens 96   # monitor cost, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = ("sft", "pact-live", "pact-cache", "naive", "kl", "constrained-sft", "safelora", "asft", "lisa", "safegrad",
         "ewc", "freeze", "token-weighted")
METHOD_OF = {"sft": "sft", "pact-live": "pact", "pact-cache": "pact", "naive": "pact", "kl": "kl",
             "constrained-sft": "constrained_sft", "token-weighted": "token_weighted"}  # mode -> --method (else the mode)
# options a mode needs beyond the shared set-up; "{half}" = the first half of the decoder layers
# lisa: one alignment step in ten (the authors' 10% share, scaled to a short run), so the measured steps
# after warm-up are fine-tuning steps on the user's data with the proximal term
MODE_OPTIONS = {"freeze": {"freeze_layers": "{half}"},
                "lisa": {"lisa_alignment_steps": "1", "lisa_finetune_steps": "9"}}
# Shapes of public configs, hard-coded because the benchmark machine has no network.
RANDOM_CONFIGS = {
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
                     "tie_word_embeddings": True, "hidden_act": "silu"},
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": True, "hidden_act": "silu"},
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "tie_word_embeddings": True, "hidden_act": "silu"},
}
WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "they", "this", "are", "had", "not", "but", "have", "one", "all", "were", "when", "we", "there", "can", "an", "which", "their", "said", "if", "do", "will", "each", "about", "how", "up", "out", "them", "then", "she", "many", "some", "so", "these", "would", "other", "into", "has", "more", "two", "like", "him", "see", "time", "could", "no", "make", "than", "first", "been", "its", "who", "now", "people", "my", "made", "over", "did", "down", "only", "way", "find", "use", "may", "water", "long", "little", "very", "after", "words", "called", "just", "where", "most", "know", "number", "apples", "train", "price", "total", "answer", "step", "first", "multiply", "add", "divide"]


# ---------------------------------------------------------------------------------------------- set-up
def _text(tok, rng, n_tokens: int) -> str:
    words: list[str] = []
    while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) < n_tokens:
        words += rng.choices(WORDS, k=8)
    while len(words) > 1 and len(tok(" ".join(words[:-1]), add_special_tokens=False)["input_ids"]) >= n_tokens:
        words.pop()
    return " ".join(words)


def make_setup(args, root: Path) -> dict:
    """Model directory (or packaged name), tokens artifact and data file shared by every mode."""
    import torch

    from safekeel.testing import tiny_tokens

    if args.tiny:
        from safekeel.testing import build_tokenizer, save_tiny

        tok = build_tokenizer()
        model = save_tiny(root / "model", seed=1, tokenizer=tok)
    elif args.random_config:
        from transformers import AutoConfig, AutoModelForCausalLM

        from safekeel.testing import build_tokenizer

        tok = build_tokenizer()  # the tokenizer only needs the ids it emits; the head keeps the full vocabulary
        shape = dict(RANDOM_CONFIGS[args.random_config])
        config = AutoConfig.for_model(shape.pop("model_type"), **shape, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, bos_token_id=None)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            net = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if args.bf16 else torch.float32)
        net.save_pretrained(root / "model")
        tok.save_pretrained(root / "model")
        model, net = str(root / "model"), None
    else:
        from safekeel.models.loader import load_tokenizer

        tok, model = load_tokenizer(args.model), args.model
    tiny_tokens(tok, min(args.k, len(tok) - 50)).save(root / "tokens.json")
    rng = random.Random(0)
    rows = [{"id": f"b{i}", "harmful": i % 10 == 0,
             "messages": [{"role": "user", "content": _text(tok, rng, args.prompt_tokens)},
                          {"role": "assistant", "content": _text(tok, rng, args.answer_tokens)}]}
            for i in range(args.examples)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    refusal = "I'm sorry, but I can't help with that. It could cause serious harm."
    safety = [{"id": f"s{i}", "harmful": False, "messages": [
        {"role": "user", "content": _text(tok, rng, args.prompt_tokens)}, {"role": "assistant", "content": refusal}]}
        for i in range(max(8, args.examples // 4))]
    (root / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in safety))
    # the monitor's prompts: 41 like harmbench-val, about as long as its behaviours (~24 tokens)
    (root / "monitor.jsonl").write_text("".join(json.dumps({"id": f"m{i}", "prompt": _text(tok, rng, 24)}) + "\n"
                                                for i in range(41)))
    return {"model": model, "tokens": str(root / "tokens.json"), "data": str(root / "data.jsonl"),
            "safety": str(root / "safety.jsonl"), "monitor_prompts": str(root / "monitor.jsonl"),
            **_base_and_depth(model, root / "base", args)}


def _base_and_depth(model: str, target: Path, args) -> dict:
    """{"base": a perturbed copy of the model, "n_layers": its depth}, made only when a requested mode
    needs one (a `--base` defence, or freeze's "{half}"); the interleaved benchmarks, whose set-up
    arguments name no modes, never pay for the copy."""
    from safekeel.defences.registry import defence_class

    modes = [m.strip() for m in (getattr(args, "modes", "") or "").split(",") if m.strip()]
    needs_depth = any(v == "{half}" for m in modes for v in MODE_OPTIONS.get(m, {}).values())
    if not needs_depth and not any("base" in defence_class(METHOD_OF.get(m, m))().needs() for m in modes):
        return {"base": None, "n_layers": None}
    from transformers import AutoConfig

    base = _perturbed_copy(model, target, args)
    return {"base": base, "n_layers": int(AutoConfig.from_pretrained(base).num_hidden_layers)}


def _perturbed_copy(model: str, target: Path, args) -> str:
    """A copy of `model` with every weight moved by 1% noise: the stand-in "unaligned counterpart" (--base)
    of the modes that need one (same shapes and tokenizer; the cost does not depend on the values)."""
    import torch

    from safekeel.models.loader import load_model

    net, tok = load_model(model, dtype="bfloat16" if args.bf16 else "float32", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * (p.float().std().nan_to_num() * 0.01 + 1e-4))
    net.save_pretrained(target)
    tok.save_pretrained(target)
    return str(target)


# ---------------------------------------------------------------------------------------------- one mode
class _PeakRSS:
    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def pair_setup_args(args) -> argparse.Namespace:
    """The `make_setup`/`mode_flags` settings of the interleaved benchmarks (bench_step_pairs, bench_versions):
    one batch of data, LoRA, fp32."""
    return argparse.Namespace(tiny=args.tiny, random_config=None, model=args.model, k=args.k,
                              prompt_tokens=args.prompt_tokens, answer_tokens=args.answer_tokens,
                              examples=args.batch_size, batch_size=args.batch_size, bf16=False, full=False,
                              gradient_checkpointing=False)


def timed_step(trainer, batch) -> tuple[float, float]:
    """(seconds, loss) of one `compute_loss` + backward on `batch`; gradients and log sums are cleared
    after, so the next call starts from the same state (no optimizer step)."""
    t = time.perf_counter()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    dt = time.perf_counter() - t
    trainer.model.zero_grad(set_to_none=True)
    trainer._sums = {}
    return dt, float(loss.detach())


def _first_half(setup: dict) -> str:
    """The `--freeze-layers` spec of the first half of the model's decoder layers."""
    return f"0-{max(1, setup['n_layers'] // 2) - 1}"


def mode_flags(mode: str, setup: dict, args, work: Path, *, max_steps: int) -> dict:
    """`safekeel train` options of one mode (flat names) on the shared set-up; outputs under `work`."""
    import torch

    from safekeel.defences.registry import defence_class

    method = METHOD_OF.get(mode, mode)
    cls = defence_class(method)
    inputs = {**cls().needs(), **cls.optional_inputs}
    flat = {"method": method, **{k: setup[{"safety_data": "safety"}.get(k, k)] for k in ("base", "safety_data")
                                 if k in inputs},
            **{k: _first_half(setup) if v == "{half}" else v for k, v in MODE_OPTIONS.get(mode, {}).items()}, "model": setup["model"], "dataset": setup["data"],
            "tokens": setup["tokens"] if method == "pact" else None, "output_dir": str(work / "out"),
            "max_steps": max_steps, "logging_steps": 1000, "save_steps": 10**6, "disable_tqdm": True,
            "per_device_train_batch_size": args.batch_size, "overlap_check": "none", "bf16": args.bf16,
            "reference_cache": "on" if mode == "pact-cache" else "off", "reference_cache_dir": str(work / "cache"),
            "max_length": args.prompt_tokens + args.answer_tokens + 64, "full": args.full,
            "gradient_checkpointing": args.gradient_checkpointing, "report_to": "none"}
    if args.bf16 and torch.cuda.is_available():
        flat["dtype"] = "bfloat16"
    return flat


def run_mode(mode: str, setup: dict, args, out_file: Path) -> None:
    import psutil
    import torch
    from transformers import TrainerCallback

    from safekeel.training.config import build_config
    from safekeel.training.run import prepare

    rss0 = psutil.Process().memory_info().rss
    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    flat = mode_flags(mode, setup, args, work, max_steps=args.warmup + args.steps)
    t_prepare = time.perf_counter()
    prep = prepare(build_config(flat), reference_impl="naive" if mode == "naive" else "fast", progress=False)
    t_prepare = time.perf_counter() - t_prepare
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    prep.trainer.add_callback(Timer())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with _PeakRSS() as rss:
        prep.trainer.train()
        t_after = time.perf_counter()
        prep.context.model = prep.trainer.model
        prep.trainer.defence.after_train(prep.trainer.model, prep.context)
        t_after = time.perf_counter() - t_after
    measured = times[args.warmup:]
    tokens_per_example = statistics.mean(len(e["input_ids"]) for e in prep.examples)
    s_step = statistics.median(measured)
    result = {"mode": mode, "reference": prep.reference, "s_per_step": s_step, "steps": len(measured),
              "step_times": measured, "tokens_per_s": tokens_per_example * args.batch_size / s_step,
              "cache_seconds": prep.cache_seconds, "prepare_seconds": t_prepare, "after_seconds": t_after,
              "examples": len(prep.examples),
              "tokens_per_example": tokens_per_example,
              "peak_bytes": torch.cuda.max_memory_allocated() if cuda else rss.peak - rss0,
              "memory_kind": "cuda_max_allocated" if cuda else "peak_rss_minus_bare_process"}
    out_file.write_text(json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- monitor
def _full_length_answers(n_tokens: int):
    """`monitor_probe.answer`, each answer padded with filler words to at least `n_tokens` tokens: random
    weights emit ids the stand-in tokenizer cannot decode, while a real model's refusal fills the probe's
    budget, so the teacher-forced pass is timed at its full length (generation is timed as it is)."""
    from safekeel.training import monitor_probe

    real, filler = monitor_probe.answer, " ".join(["sorry"] * n_tokens)

    def answer(model, tok, texts, max_new_tokens):
        return [a if len(tok(a, add_special_tokens=False).input_ids) >= n_tokens else f"{a} {filler}"
                for a in real(model, tok, texts, max_new_tokens)]

    return answer


def monitor_run(setup: dict, args, interval: int, benign: str = "instructions") -> dict:
    """One training run of `args.monitor_mode` (interval 0: no monitor; `benign` its over-refusal probe's
    set, "none" for none): wall time of `train()`, step times and the monitor's per-probe seconds."""
    from transformers import TrainerCallback

    from safekeel.training.config import build_config
    from safekeel.training.run import prepare

    work = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    flat = mode_flags(args.monitor_mode, setup, args, work, max_steps=args.warmup + args.steps)
    flat.update(monitor_steps=interval, monitor_prompts=setup["monitor_prompts"] if interval else None,
                monitor_benign_prompts=benign, logging_steps=10**6)
    prep = prepare(build_config(flat), reference_impl="fast", progress=False)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):  # after the monitor's on_step_end: a probe step is slower (median)
            times.append(time.perf_counter() - self.t)

    prep.trainer.add_callback(Timer())
    t0 = time.perf_counter()
    prep.trainer.train()
    total = time.perf_counter() - t0
    probes = [r for r in map(json.loads, (work / "out" / "train_log.jsonl").read_text().splitlines())
              if "monitor/seconds" in r]
    shutil.rmtree(work, ignore_errors=True)
    return {"train_seconds": total, "step_times": times[args.warmup:],
            "start_probe_seconds": next((r["monitor/seconds"] for r in probes if r["step"] == 0), None),
            "probe_seconds": [r["monitor/seconds"] for r in probes if r["step"] > 0],
            "refusal_rate": [r["monitor/refusal_rate"] for r in probes]}


def monitor_overhead(setup: dict, args) -> dict:
    """Train with the monitor off and on, alternately, in this process; ratios (see the module docstring)."""
    from safekeel.training import monitor_probe
    from safekeel.training.config import MonitorOptions

    default = MonitorOptions().monitor_steps
    interval = args.monitor_steps or default
    monitor_probe.answer = _full_length_answers(MonitorOptions().monitor_probe_tokens)
    arms = {"off": (0, "none"), "harmful_only": (interval, "none"), "on": (interval, "instructions")}
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for rnd in range(args.repeats):
        for name, (every, benign) in arms.items():
            runs[name].append(monitor_run(setup, args, every, benign))
            print(f"round {rnd + 1}/{args.repeats} monitor {name}: {runs[name][-1]['train_seconds']:.2f} s")
    s_step = statistics.median(t for r in runs["off"] for t in r["step_times"])

    def probe_seconds(name: str) -> float:
        probe = [t for r in runs[name] for t in r["probe_seconds"]] or [r["start_probe_seconds"] for r in runs[name]]
        return statistics.median(probe)

    probe_s, probe_h = probe_seconds("on"), probe_seconds("harmful_only")
    off, harmful, on = (statistics.median(r["train_seconds"] for r in runs[k]) for k in arms)
    result = {"mode": args.monitor_mode, "interval": interval, "default_interval": default,
              "steps": args.warmup + args.steps, "s_per_step": s_step, "probe_seconds": probe_s,
              "probe_seconds_harmful_only": probe_h,
              "start_probe_seconds": statistics.median(r["start_probe_seconds"] for r in runs["on"]),
              "train_seconds_off": off, "train_seconds_harmful_only": harmful, "train_seconds_on": on,
              "measured_ratio": on / off, "measured_ratio_harmful_only": harmful / off,
              "projected_ratio_default": 1 + probe_s / (default * s_step),
              "projected_ratio_default_harmful_only": 1 + probe_h / (default * s_step), "runs": runs}
    print(f"\nmonitor overhead ({args.monitor_mode}, {result['steps']} steps, probe every {interval}, "
          f"{s_step:.3f} s/step):\n"
          f"  defaults (harmful + over-refusal probe): train() {off:.2f} s without, {on:.2f} s with = {on / off:.3f}x; "
          f"{probe_s:.3f} s per probe (start probe {result['start_probe_seconds']:.3f} s); projected at the default "
          f"interval ({default} steps): {result['projected_ratio_default']:.3f}x\n"
          f"  harmful probe only (--monitor-benign-prompts none): {harmful:.2f} s = {harmful / off:.3f}x; "
          f"{probe_h:.3f} s per probe; projected {result['projected_ratio_default_harmful_only']:.3f}x")
    return result


# ---------------------------------------------------------------------------------------------- report
def pool_rounds(runs: list[dict]) -> dict:
    """One mode's rounds -> one result: median step time over all measured steps of all rounds, the
    largest peak memory, the median cache pass."""
    pooled = dict(runs[-1])
    steps = [t for r in runs for t in r["step_times"]]
    pooled.update(step_times=steps, steps=len(steps), s_per_step=statistics.median(steps), rounds=len(runs),
                  peak_bytes=max(r["peak_bytes"] for r in runs),
                  cache_seconds=statistics.median(r["cache_seconds"] for r in runs),
                  prepare_seconds=statistics.median(r["prepare_seconds"] for r in runs),
                  after_seconds=statistics.median(r["after_seconds"] for r in runs))
    pooled["tokens_per_s"] = runs[-1]["tokens_per_s"] * runs[-1]["s_per_step"] / pooled["s_per_step"]  # same tokens/step
    return pooled


def report(results: dict, args) -> dict:
    sft = results["sft"]
    steps_run = -(-args.examples // args.batch_size) * args.epochs  # a whole run over the data
    rows = []
    for mode in MODES:
        if mode not in results:
            continue
        r = results[mode]
        # one-off work beyond SFT's: set-up (model load and tokenisation cancel out; the cache pass, a Fisher
        # estimate, a subspace remain) and after_train (a projection); never negative (timing noise)
        one_off = max(0.0, r["prepare_seconds"] - sft["prepare_seconds"]) + r["after_seconds"]
        e2e = (one_off + steps_run * r["s_per_step"]) / (steps_run * sft["s_per_step"])
        one = steps_run // args.epochs  # the same for a single epoch: one-off work weighs most there
        e2e_1 = (one_off + one * r["s_per_step"]) / (one * sft["s_per_step"])
        r.update(step_ratio=r["s_per_step"] / sft["s_per_step"], memory_ratio=r["peak_bytes"] / sft["peak_bytes"],
                 one_off_seconds=one_off, end_to_end_ratio=e2e, end_to_end_ratio_1_epoch=e2e_1)
        rows.append(r)
    print(f"\n{'mode':<16} {'s/step':>8} {'tokens/s':>9} {'peak MiB':>9} {'step×':>6} {'mem×':>6} {'e2e×':>6} "
          f"{'e2e×1ep':>8} {'one-off s':>9}")
    for r in rows:
        print(f"{r['mode']:<16} {r['s_per_step']:>8.3f} {r['tokens_per_s']:>9.0f} {r['peak_bytes'] / 2**20:>9.0f} "
              f"{r['step_ratio']:>6.2f} {r['memory_ratio']:>6.2f} {r['end_to_end_ratio']:>6.2f} "
              f"{r['end_to_end_ratio_1_epoch']:>8.2f} {r['one_off_seconds']:>9.2f}")
    print(f"(end to end: {steps_run} steps = {args.examples} examples x {args.epochs} epochs at batch {args.batch_size},"
          f" plus the one-off seconds (set-up beyond SFT's, e.g. the cache pass, and after_train); e2e×1ep: one epoch)")
    return {"settings": vars(args), "results": {r["mode"]: r for r in rows}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="smollm2-135m-instruct", help="packaged name, directory or hub id")
    src.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS), help="random weights of a known shape")
    src.add_argument("--tiny", action="store_true", help="the 2-layer test model (smoke test)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--steps", type=int, default=10, help="measured steps per mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--examples", type=int, default=64, help="rows in the data (the cache pass covers all)")
    p.add_argument("--epochs", type=int, default=3, help="for the end-to-end ratio")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--answer-tokens", type=int, default=192)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all modes (pooled; see pool_rounds)")
    p.add_argument("--in-process", action="store_true",
                   help="run every mode in this process (CPU memory figures then include earlier modes' leftovers)")
    p.add_argument("--monitor-overhead", action="store_true",
                   help="time training with and without the safety monitor instead (see above)")
    p.add_argument("--monitor-mode", default="pact-cache", choices=MODES, help="the mode --monitor-overhead trains")
    p.add_argument("--monitor-steps", type=int, default=0,
                   help="the probe interval of the measured runs (0: the default interval)")
    p.add_argument("--output", default="bench_train.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--setup", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        run_mode(args.worker, json.loads(Path(args.setup).read_text()), args, Path(args.result))
        return 0
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    t0 = time.perf_counter()
    setup = make_setup(args, root)
    (root / "setup.json").write_text(json.dumps(setup))
    print(f"set-up in {time.perf_counter() - t0:.1f} s: {setup['model']}, {args.examples} examples of "
          f"~{args.prompt_tokens}+{args.answer_tokens} tokens, batch {args.batch_size}")
    if args.monitor_overhead:
        summary = {"settings": vars(args), "monitor_overhead": monitor_overhead(setup, args)}
        return _write(summary, args, root)
    results: dict[str, list[dict]] = {}
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    # Rounds over all modes (sft, pact-live, ..., sft, pact-live, ...): slow drifts of a shared machine
    # then hit every mode alike instead of whichever mode happened to run during them.
    for rnd in range(args.repeats):
        for mode in modes:
            out = root / f"{mode}-{rnd}.json"
            if args.in_process:
                import gc

                import torch

                run_mode(mode, setup, args, out)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            else:
                cmd = [sys.executable, __file__, *passthrough, "--worker", mode, "--setup", str(root / "setup.json"),
                       "--result", str(out)]
                proc = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, check=False)
                if proc.returncode != 0:
                    print(f"{mode}: failed (exit {proc.returncode})", file=sys.stderr)
                    return 1
            results.setdefault(mode, []).append(json.loads(out.read_text()))
            print(f"round {rnd + 1}/{args.repeats} {mode}: {results[mode][-1]['s_per_step']:.3f} s/step")
    results = {mode: pool_rounds(runs) for mode, runs in results.items()}
    if "sft" not in results:
        print("the sft mode is needed for the ratios", file=sys.stderr)
        return 1
    return _write(report(results, args), args, root)


def _write(summary: dict, args, root: Path) -> int:
    import torch

    summary["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(summary, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
