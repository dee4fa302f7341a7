"""`train(config)`: the typed entry behind `safekeel train`.

Steps: cheap checks of every argument and of `output_dir` (`guard.preflight`: no download, no model,
nothing written) → the directory's `RunLock` (one writer at a time) → `guard.settle` (`--overwrite`
removes the previous run, `--resume` picks the latest complete checkpoint trained with the same options)
→ training arguments (this also sets up DDP under `accelerate launch`/`torchrun`) → model and
tokenizer → rows (task data, harmful mix, overlap checks) → tokenised examples with both views →
safety tokens → reference: none (sft), a one-off cache of K-logits (default when it fits on disk), or a
live reference (LoRA: the same model with adapters off; full: a frozen copy) → LoRA wrapping → Trainer
(with the safety monitor, training/monitor.py, unless it is off) →
adapter (or full model) and tokenizer in `output_dir`, `train_log.jsonl`, `safekeel_run.json`; every
checkpoint also records the run's options (`safekeel_options.json`).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safekeel.defences.base import sharded_backend
from safekeel.errors import SafekeelError
from safekeel.training.arguments import training_arguments
from safekeel.training.config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    metrics: dict
    reference: str  # none | cache | live | naive
    cache_dir: str | None = None
    cache_seconds: float = 0.0
    summary: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """Everything `train` builds before `trainer.train()` (tests and the benchmark use it directly)."""

    trainer: object
    config: RunConfig
    examples: list
    collator: object
    summary: dict
    reference: str
    cache_dir: str | None
    cache_seconds: float
    context: object = None  # the defence's TrainContext (after_train gets it)
    monitor: object = None  # the SafetyMonitor callback, None when the monitor is off (training/monitor.py)


def load_for_training(cfg: RunConfig, args):
    """(model, tokenizer) on the rank's device through the one loader (GGUF conversion, one-line errors);
    QLoRA loads 4-bit weights (GPU + bitsandbytes) and prepares them for k-bit training."""
    from safekeel.models.loader import load_model, pick_dtype

    if not cfg.lora.load_in_4bit:
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device="cpu", trust_remote_code=cfg.trust_remote_code)
        model.to(args.device)
        return model, tok
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SafekeelError("--load-in-4bit needs the bitsandbytes package (pip install bitsandbytes)") from None
    if not torch.cuda.is_available():
        raise SafekeelError("--load-in-4bit (QLoRA) needs a CUDA GPU")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=pick_dtype(cfg.dtype, args.device))
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device=str(args.device), quantization_config=quant,
                            trust_remote_code=cfg.trust_remote_code)
    source = model.safekeel_source
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
    model.safekeel_source, model.safekeel_adapter = source, None
    return model, tok


def add_lora(model, cfg: RunConfig):
    from peft import LoraConfig, get_peft_model

    lo = cfg.lora
    targets = lo.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=lo.lora_r, lora_alpha=lo.lora_alpha, lora_dropout=lo.lora_dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # PEFT's NoMatchingPeftModuleError and friends: the user's module names
        raise SafekeelError(f"--lora-target-modules {lo.lora_target_modules}: {str(exc).splitlines()[0]}") from None


def load_tokens(cfg: RunConfig, tokenizer, defence):
    """The safety tokens the defence uses (its top K), or None when none were given."""
    if not cfg.tokens:
        return None
    from safekeel.training.guard import read_tokens

    art = read_tokens(cfg.tokens)
    art.check_tokenizer(tokenizer)
    preset = getattr(cfg.defence, "preset", None)
    if preset is not None and art.preset != preset:
        log.warning("the safety tokens were identified with preset %s; training uses preset %s", art.preset, preset)
    return defence.select_tokens(art)


def prepare(cfg: RunConfig, *, reference_impl: str = "fast", progress: bool = True) -> Prepared:
    """Build the trainer and everything it needs; `reference_impl="naive"` is the authors' way (benchmark).

    No checks of `output_dir` and no lock here (tests and benchmarks reuse directories): `train` adds them."""
    from transformers import set_seed

    from safekeel.defences.base import TrainContext
    from safekeel.defences.registry import defence_class
    from safekeel.fingerprint import file_fingerprint, reference_model_fingerprint, tokenizer_fingerprint
    from safekeel.training.checkpoints import RecordOptions
    from safekeel.training.collate import Collator, ExampleDataset, encode_rows
    from safekeel.training.data import load_rows
    from safekeel.training.reference import NaiveReference
    from safekeel.training.trainer import JsonlLogger, SafekeelTrainer

    # transformers' own Trainer calls its deprecated alias every step; not the user's concern
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    defence = defence_class(cfg.method)(cfg.defence)
    defence.check(cfg)
    args = training_arguments(cfg)
    set_seed(cfg.training.seed)
    model, tok = load_for_training(cfg, args)
    tokens = load_tokens(cfg, tok, defence)
    rows, data_summary = load_rows(cfg, identification_set=(tokens.meta.get("prompt_set") if tokens else None))
    out = Path(cfg.output_dir)
    max_length = _fit_context(cfg.training.max_length, model, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ctx = TrainContext(config=cfg, model=model, tokenizer=tok, rows=rows, tokens=tokens, device=args.device,
                       args=args, output_dir=out, batcher=_batcher(tok, max_length, pad_id, args.device))
    defence.setup(ctx)
    plan = defence.data_plan(ctx)
    post = defence.post_positions() if defence.reference == "safety" else 0
    examples, enc_summary = encode_rows(tok, rows, max_length=max_length, post_positions=post)
    examples, ranges = plan_examples(plan, examples, tok, max_length=max_length, post_positions=post)
    ids = tokens.ids_tensor() if tokens is not None else None
    model_fp = reference_model_fingerprint(model)

    mode, cache, cache_dir, cache_s, live, frozen = "none", None, None, 0.0, None, None
    if defence.reference is not None:
        if reference_impl == "naive":  # a second full copy and full-vocabulary forwards, as the authors do
            live, mode = NaiveReference(copy.deepcopy(model).requires_grad_(False).eval(), ids), "naive"
        elif defence.reference == "safety" and cfg.reference_cache != "off":
            cache, cache_dir, cache_s = build_reference_cache(
                model, tok, tokens, examples, model_fp=model_fp, root_dir=cfg.reference_cache_dir,
                required=cfg.reference_cache == "on", pad_id=pad_id, batch_size=cfg.reference_batch_size,
                device=args.device, args=args, progress=progress and not cfg.training.disable_tqdm)
            mode = "cache" if cache is not None else mode
        if mode == "none":
            mode = "live"
            _check_live_reference_is_supported(args, defence.reference)
            if cfg.lora.full:  # full fine-tuning changes the weights the reference needs: keep a frozen copy
                frozen = copy.deepcopy(model).requires_grad_(False).eval()
    if not cfg.lora.full:
        model = add_lora(model, cfg)
    model = defence.configure_model(model)
    if mode == "live":
        live = live_reference(defence, frozen if frozen is not None else model, ids, examples, pad_id, args.device)

    out.mkdir(parents=True, exist_ok=True)
    summary = {"data": {**data_summary, **enc_summary}, "model": model_fp, "tokenizer_sha256": tokenizer_fingerprint(tok),
               "tokens": {"path": cfg.tokens, "sha256": file_fingerprint(cfg.tokens), "k": tokens.k, "ids": tokens.token_ids, "tokens": tokens.tokens,
                          "preset": tokens.preset} if tokens else None,
               "reference": {"mode": mode, "cache_dir": cache_dir, "cache_seconds": round(cache_s, 3)},
               "distributed": {"world_size": args.world_size, "device": str(args.device)}}
    if plan:
        summary["data"]["plan"] = {name: len(r) for name, r in ranges.items()}
    batch_plan = planned_batches(plan, ranges, args, cfg.training.seed) if plan else None
    try:
        trainer = SafekeelTrainer(
            model=model, args=args, train_dataset=ExampleDataset(examples), data_collator=Collator(pad_id, cache),
            processing_class=tok,
            callbacks=[JsonlLogger(out / "train_log.jsonl"), RecordOptions(cfg.to_dict()), *defence.callbacks()],
            defence=defence, reference=live, safety_ids=ids, batch_plan=batch_plan)
    except ValueError as exc:  # argument combinations only the Trainer checks (eval_strategy without eval data)
        raise SafekeelError(f"bad training arguments: {str(exc).splitlines()[0]}") from None
    from safekeel.training.monitor import build_monitor

    trained = rows + [r for extra in (plan.sources.values() if plan else ()) for r in extra] + \
        ctx.cache.get("safety_rows", [])  # every prompt this run trains on, the defence's safety rows included
    monitor, summary["monitor"] = build_monitor(trainer, cfg, tok, ids, trained, backend=sharded_backend(args),
                                                identification_set=tokens.meta.get("prompt_set") if tokens else None)
    from safekeel.data.leakage import run_record

    # what this run was fitted on, so `eval safety` of its output can warn on overlap (docs/leakage.md)
    summary["fitted_prompts"] = run_record(cfg.tokens, tokens, rows, trained[len(rows):], summary["monitor"])
    ctx.model = model
    return Prepared(trainer, cfg, examples[:len(ranges["main"])], Collator(pad_id, cache), summary, mode, cache_dir,
                    cache_s, ctx, monitor)


def _batcher(tokenizer, max_length: int, pad_id: int, device):
    """TrainContext.batches: chat rows -> collated answer-frame batches on `device`, row order kept."""
    from safekeel.training.collate import Collator, encode_rows

    collate = Collator(pad_id)

    def batches(rows: list[dict], batch_size: int = 4) -> list[dict]:
        if batch_size <= 0:
            raise SafekeelError(f"batch size must be positive, got {batch_size}")
        examples, _ = encode_rows(tokenizer, rows, max_length=max_length, post_positions=0)
        out = []
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size])
            out.append({k: v.to(device) for k, v in batch.items() if not k.startswith("post_")})
        return out

    return batches


def plan_examples(plan, examples: list[dict], tokenizer, *, max_length: int, post_positions) -> tuple[list, dict]:
    """(examples, ranges): the user's encoded `examples` followed by each source of the defence's `DataPlan`
    (`plan`, or None), encoded the same way, and {source: range of indices}, "main" first. Shared by
    `prepare` and the TRL integration (integrations/trl.py), so both train on the same rows."""
    from safekeel.training.collate import encode_rows

    ranges = {"main": range(len(examples))}
    for name, source_rows in (plan.sources.items() if plan else ()):
        extra, _ = encode_rows(tokenizer, source_rows, max_length=max_length, post_positions=post_positions)
        ranges[name] = range(len(examples), len(examples) + len(extra))
        examples = examples + extra
    return examples, ranges


def planned_batches(plan, ranges: dict, args, seed: int):
    """The `PlannedBatches` sampler of `plan` over `ranges` (from `plan_examples`), sized by the training
    arguments `args` (batch size, accumulation, processes); shared with the TRL integration."""
    from safekeel.training.data_plan import PlannedBatches, steps_per_epoch

    spe = steps_per_epoch(len(ranges["main"]), args.per_device_train_batch_size, args.gradient_accumulation_steps,
                          args.world_size)
    return PlannedBatches(ranges, plan.schedule, batch_size=args.per_device_train_batch_size,
                          accumulation=args.gradient_accumulation_steps, world_size=args.world_size,
                          steps_per_epoch=spe, seed=seed)


def _fit_context(max_length: int, model, tokenizer) -> int:
    """`--max-length`, cut to the model's context: longer rows would fail on a learned position table
    (mid-training) or train a RoPE model on positions it never saw."""
    from safekeel.generation import context_length

    limit = context_length(model, tokenizer)
    if limit is not None and max_length > limit:
        log.warning("--max-length %d is longer than the model's context (%d tokens); using %d", max_length, limit,
                    limit)
        return limit
    return max_length


def _check_live_reference_is_supported(args, kind: str) -> None:
    """The live reference calls the unwrapped model's layers between steps, which sharded parameters
    do not allow: under FSDP / DeepSpeed the reference must come from the cache (built before wrapping)."""
    backend = sharded_backend(args)
    if backend and kind == "safety":
        raise SafekeelError(f"under {backend} the reference must come from the cache: use --reference-cache on "
                            "(the live reference calls the unwrapped model, whose parameters are sharded)")
    if backend:
        raise SafekeelError(f"the {kind} reference (--method kl, --kl-scope full, constrained_sft) is computed live, "
                            f"which {backend} does not allow here; use DDP (plain `accelerate launch` / torchrun)")


def build_reference_cache(model, tok, tokens, examples: list[dict], *, model_fp: dict, root_dir: str | None,
                          required: bool, pad_id: int, batch_size: int, device, args, progress: bool):
    """(ReferenceCache, its directory, seconds) of the reference's K safety logits for `examples`, computed
    now with the model before training (adapters off for a PEFT model), self-checked first; (None, None, 0)
    when it would not fit on disk and is not `required` (the caller then uses the live reference).
    Shared by `prepare` and the TRL integration (integrations/trl_reference.py)."""
    from safekeel.fingerprint import tokenizer_fingerprint
    from safekeel.models.loader import cache_root
    from safekeel.training import cache as cache_mod
    from safekeel.training.collate import Collator
    from safekeel.training.reference import SafetyReference

    fp = cache_mod.fingerprint(model_fp=model_fp, tokenizer_fp=tokenizer_fingerprint(tok),
                               safety_ids=tokens.token_ids, examples=examples)
    root = Path(root_dir or (cache_root() / "reference")) / fp[:32]
    ok, why = cache_mod.fits(examples, tokens.k, root.parent)
    if not ok and not required:
        log.warning("reference cache would not fit (%s): using the live reference", why)
        return None, None, 0.0
    plain = Collator(pad_id)
    ref = SafetyReference(model, tokens.ids_tensor())  # the model before training is the reference
    _self_check(ref, plain, examples, device)
    t0 = time.perf_counter()
    cache = cache_mod.build(root, fp, examples, ref, plain, batch_size=batch_size, device=device,
                            process_index=args.process_index, world_size=args.world_size, progress=progress)
    return cache, str(root), time.perf_counter() - t0


def live_reference(defence, model, ids, examples: list[dict], pad_id: int, device):
    """The live `SafetyReference` on `model` (a frozen copy, or the PEFT model whose adapters it turns
    off), checked once against the full forward. Shared by `prepare` and the TRL integration."""
    from safekeel.training.collate import Collator
    from safekeel.training.reference import SafetyReference

    live = SafetyReference(model, ids)
    if defence.reference in ("safety", "target"):
        _self_check(live, Collator(pad_id), examples, device, defence.reference)
    return live


def _self_check(ref, collator, examples, device, kind: str = "safety") -> None:
    """One comparison of the fast reference (K-row projection, or the answer tokens' log-probabilities)
    against the full forward, before any training."""
    batch = {k: v.to(device) for k, v in collator(examples[:2]).items()}
    if kind == "target":
        ref.check_targets(batch)
    else:
        ref.check(batch)


def train(cfg: RunConfig, *, progress: bool = True) -> TrainResult:
    """Run one training job; see the module docstring. Writes the model, logs and safekeel_run.json."""
    from safekeel.locking import RunLock
    from safekeel.training import guard

    guard.preflight(cfg)  # one-line errors before the lock, so a refused command leaves no trace
    with RunLock(cfg.output_dir, "train"):
        plan = guard.settle(cfg)
        return _train_locked(cfg, plan.resume, progress)


def _train_locked(cfg: RunConfig, resume: str | None, progress: bool) -> TrainResult:
    from safekeel import __version__
    from safekeel.io_utils import atomic_write_json

    t0 = time.perf_counter()
    prep = prepare(cfg, progress=progress)
    trainer, out = prep.trainer, Path(cfg.output_dir)
    run_file = out / "safekeel_run.json"
    record = {"safekeel_version": __version__, "status": "running", "options": cfg.to_dict(), **prep.summary,
              "resumed_from": resume, "versions": _versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if trainer.is_world_process_zero():
        atomic_write_json(run_file, record)
    if prep.monitor is not None:
        prep.monitor.resume_from = resume  # its start values are in the checkpoint
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except ValueError as exc:
        if "checkpoint" in str(exc).lower():
            raise SafekeelError(f"--resume: {str(exc).splitlines()[0]}") from None
        raise
    prep.context.model = trainer.model
    trainer.defence.after_train(trainer.model, prep.context)  # e.g. a projection of the LoRA update
    trainer.save_model(str(out))
    metrics = dict(result.metrics)
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
        if prep.monitor is not None:
            record["monitor"]["rollbacks"] = prep.monitor.rollbacks
        record.update(status="done", global_step=trainer.state.global_step, metrics=metrics,
                      wall_seconds=round(time.perf_counter() - t0, 2), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if record.get("tokens") and getattr(prep.context, "tokens", None) is not None:
            record["tokens"]["weights"] = prep.context.tokens.weights  # the model card lists them
        atomic_write_json(run_file, record)
        from safekeel.training.model_card import try_write_model_card

        try_write_model_card(out)  # our README.md replaces the blank one PEFT's save wrote
    return TrainResult(out, trainer.state.global_step, metrics, prep.reference, prep.cache_dir, prep.cache_seconds,
                       prep.summary)


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
