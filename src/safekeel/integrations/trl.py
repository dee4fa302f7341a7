"""`SafetySFTTrainer`: TRL's `SFTTrainer` with a safekeel defence (PACT by default); docs/trl.md.

    from trl import SFTConfig
    from safekeel.integrations.trl import SafetySFTTrainer

    trainer = SafetySFTTrainer(model=model, args=SFTConfig(output_dir="out"), train_dataset=ds,
                               processing_class=tok, peft_config=LoraConfig(...),
                               defence="pact", tokens="tokens.json", defence_options={"lambda": 3})
    trainer.train()

What it does differently from `SFTTrainer`, and why:
- it tokenises the conversational rows itself (`training/collate.encode_rows`: prompt = the chat
  template's generation prompt, answer = the last assistant turn) and passes them pre-tokenised
  (`skip_prepare_dataset`), because PACT needs the no-prompt view, which TRL's tokenisation drops;
- its batches come from safekeel's `Collator` (answer frame, no-prompt view, cached reference logits);
- its loss is `DefenceLossMixin.compute_loss` (training/loss_step.py), the very code `safekeel train`
  runs, so on the same batch and weights both give the same loss (tests/test_trl_integration.py);
- a defence with a data plan (lisa, token_weighted: extra rows such as refusals, and a schedule of which
  source each optimizer step draws from) gets its rows appended to the training set and its batches from
  `PlannedBatches`, built by the helpers `safekeel train` uses (`training/run.py`: `plan_examples`,
  `planned_batches`) and drawn by the mixin's `get_train_dataloader`, so both runs see the same batches;
- the reference (the model before this training) is the one-off cache of its K-logits
  (`reference="cache"`, training/cache.py, built here before TRL wraps the model) or live
  (`reference="live"`: with LoRA the same model with adapters off, with full fine-tuning a frozen copy);
  `"auto"` caches when it fits on disk, as `safekeel train --reference-cache auto`.
Everything else is TRL's: `SFTConfig` fields, `peft_config`, logging (plus ce, kl, ... like
`safekeel train`, and TRL's entropy, mean_token_accuracy, num_tokens), checkpoints, `report_to`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import SFTTrainer

from safekeel.defences.base import Defence, TrainContext
from safekeel.errors import SafekeelError
from safekeel.integrations import trl_inputs, trl_reference
from safekeel.training.loss_step import DefenceLossMixin

__all__ = ["SafetySFTTrainer"]

_ENTROPY_CHUNK_ELEMENTS = 1 << 24  # [rows, V] float32 block of the entropy metric: 64 MiB


class SafetySFTTrainer(DefenceLossMixin, SFTTrainer):
    """`SFTTrainer` whose loss is CE on the answer tokens + a registered defence's terms.

    Extra keyword arguments (everything else is `SFTTrainer`'s):
    - defence: a registered name (`safekeel methods`: "pact", "sft", "kl", ...) or a `Defence` instance;
    - defence_options: {option: value} as `safekeel train` spells them ({"lambda": 3, "preset": ...});
    - tokens: the safety-token file from `safekeel tokens identify` (or a `SafetyTokens`), for PACT;
    - reference: "auto" | "cache" | "live" (see the module docstring); reference_cache_dir: where caches go
      (default $SAFEKEEL_CACHE/reference);
    - base, safety_data: the inputs some defences need (`safekeel methods` lists them).
    train_dataset / eval_dataset: conversational rows, `messages` or `prompt` + `completion` message lists.
    After construction `safekeel_summary` holds the reference mode, cache directory and data counts (and,
    for a defence with a data plan, the rows of each source under "plan")."""

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None, *,
                 defence: str | Defence = "pact", defence_options: dict | None = None, tokens=None,
                 reference: str = "auto", reference_cache_dir: str | None = None, base: str | None = None,
                 safety_data: str | None = None, peft_config=None, callbacks=None, **kwargs):
        from datasets import Dataset

        from safekeel.training.collate import Collator, encode_rows
        from safekeel.training.reference import is_peft
        from safekeel.training.run import _batcher, _fit_context, plan_examples, planned_batches

        trl_inputs.refuse_kwargs(kwargs)
        if reference not in ("auto", "cache", "live"):
            raise SafekeelError(f"reference must be auto, cache or live, got {reference!r}")
        args = trl_inputs.sft_args(args, model)
        the = trl_inputs.resolve_defence(defence, defence_options)
        if safety_data is not None:  # checked before anything loads, as `safekeel train` checks --safety-data
            from safekeel.data.safety_data import safety_data_spec

            safety_data_spec(safety_data, "safety_data")
        model, tok = trl_inputs.model_and_tokenizer(model, processing_class, args, kwargs)
        given = {"tokens": tokens, "base": base, "safety_data": safety_data}
        for name, what in the.needs().items():
            if not given.get(name):
                raise SafekeelError(f"defence {the.name!r} needs {name}= ({what})")
        full = peft_config is None and not is_peft(model)
        quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
        token_spec = None if tokens is None else str(tokens) if isinstance(tokens, (str, Path)) else "<SafetyTokens>"
        cfg = trl_inputs.run_config(the, model_spec=trl_inputs.model_spec(model, tok, the), args=args,
                                    tokens=token_spec, base=base, safety_data=safety_data, full=full,
                                    targets=trl_inputs.lora_targets(peft_config, model), quantized=quantized)
        the.check(cfg)  # the modes and multi-GPU set-ups the defence supports, as `safekeel train` checks them
        if args.eos_token is not None:  # TRL sets it later; the answers must already end with it
            tok.eos_token = args.eos_token
        device = trl_reference.place(model, args, quantized)
        art = trl_inputs.safety_tokens(tokens, tok, the)
        ids = art.ids_tensor() if art is not None else None
        max_length = _fit_context(args.max_length or 1 << 30, model, tok)
        post = the.post_positions() if the.reference == "safety" else 0
        rows = trl_inputs.chat_rows(train_dataset, "train_dataset")
        examples, summary = encode_rows(tok, rows, max_length=max_length, post_positions=post)
        evals = _encode_evals(eval_dataset, tok, max_length, post)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ctx = TrainContext(config=cfg, model=model, tokenizer=tok, rows=rows, tokens=art, device=device, args=args,
                           output_dir=Path(args.output_dir), batcher=_batcher(tok, max_length, pad_id, device))
        the.setup(ctx)
        data_plan = the.data_plan(ctx)  # extra sources (e.g. refusals) and their schedule, as in `safekeel train`
        examples, ranges = plan_examples(data_plan, examples, tok, max_length=max_length, post_positions=post)
        batch_plan = planned_batches(data_plan, ranges, args, args.seed) if data_plan else None
        plan = trl_reference.before_wrapping(the, reference, model=model, tok=tok, tokens=art,
                                             examples=examples + _flat(evals), args=args, device=device,
                                             cache_dir=reference_cache_dir, full=full)

        super().__init__(model=model, args=args, data_collator=Collator(pad_id, plan.cache),
                         train_dataset=Dataset.from_list(examples), eval_dataset=_as_datasets(evals),
                         processing_class=tok, callbacks=callbacks, peft_config=peft_config, **kwargs)
        if the.configure_model(self.model) is not self.model:  # after TRL's PEFT wrapping, as after add_lora
            raise SafekeelError(f"defence {the.name!r} replaces the model in configure_model, which is not supported "
                                "in the TRL integration yet; use `safekeel train`")
        for callback in the.callbacks():
            self.add_callback(callback)
        live = trl_reference.live_reference(plan, the, self.model, ids, examples, pad_id, device)
        self._init_defence(the, live, ids, batch_plan)
        ctx.model = self.model
        self._defence_ctx = ctx
        self.safekeel_summary = {"defence": the.name, "reference": plan.mode, "cache_dir": plan.cache_dir,
                                 "data": summary, "tokens": art.k if art is not None else None}
        if data_plan:  # rows per source ({"main": n, "safety": m}), as safekeel_run.json's data.plan
            self.safekeel_summary["plan"] = {name: len(r) for name, r in ranges.items()}

    # -- TRL's behaviour kept ----------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, False, num_items_in_batch)  # DefenceLossMixin's
        if not return_outputs:
            return loss
        with torch.no_grad():  # full logits aligned with the labels, for compute_metrics (TRL also runs this pass)
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        return loss, out

    @torch.no_grad()
    def _answer_metrics(self, z, targets, inputs) -> None:
        """TRL's entropy, mean_token_accuracy (over the answer tokens) and num_tokens, from the logits z
        [N, V] at the answer positions, the entropy over row chunks (never a second [N, V] buffer at once)."""
        mode = "train" if self.model.training else "eval"
        entropy = z.new_zeros(())
        rows = max(1, _ENTROPY_CHUNK_ELEMENTS // max(1, z.shape[-1]))
        for i in range(0, z.shape[0], rows):
            logp = torch.log_softmax(z[i:i + rows], -1)
            entropy = entropy - (logp.exp() * logp).sum()
        count = torch.tensor(float(z.shape[0]), device=z.device)
        correct = (z.argmax(-1) == targets).sum().float()
        count, entropy, correct = (self.accelerator.gather_for_metrics(x.reshape(1)).sum() for x in
                                   (count, entropy, correct))
        n = float(count)
        self._metrics[mode]["entropy"].append(float(entropy) / n if n else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append(float(correct) / n if n else 0.0)
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum().reshape(1)).sum()
            self._total_train_tokens += int(tokens) // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def train(self, *args, **kwargs):
        """TRL's `train`, then the defence's `after_train` (e.g. SafeLoRA's projection), as `safekeel train`
        runs it before saving."""
        result = super().train(*args, **kwargs)
        if type(self.defence).after_train is not Defence.after_train:
            self._defence_ctx.model = self.model
            self.defence.after_train(self.model, self._defence_ctx)
        return result

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """TRL's `evaluate`; a conversational dataset passed here is tokenised like the training rows (live
        reference only: a cache holds the rows given at construction). The evaluation's defence stats are
        kept out of the training logs."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            if self.data_collator.cache is not None:
                raise SafekeelError("with the reference cache, pass eval_dataset when building the trainer (its "
                                    "reference logits are cached with the training rows), or use reference='live'")
            post = self.defence.post_positions() if self.defence.reference == "safety" else 0
            eval_dataset = _as_datasets(_encode_evals(eval_dataset, self.processing_class, self._max_length(), post))
        saved, self._sums = self._sums, {}
        try:
            return super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys,
                                    metric_key_prefix=metric_key_prefix)
        finally:
            self._sums = saved

    def _max_length(self) -> int:
        from safekeel.training.run import _fit_context

        return _fit_context(self.args.max_length or 1 << 30, self.model, self.processing_class)


def _encode_evals(eval_dataset, tok, max_length: int, post) -> dict | list | None:
    """Encoded eval examples ({name: examples} for a dict of datasets), ids prefixed so they never clash
    with the training rows' in the cache."""
    from safekeel.training.collate import encode_rows

    if eval_dataset is None:
        return None
    named = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
    out = {}
    for key, data in named.items():
        examples, _ = encode_rows(tok, trl_inputs.chat_rows(data, f"eval_dataset[{key!r}]"), max_length=max_length,
                                  post_positions=post)
        out[key] = [{**e, "id": f"eval/{key}/{e['id']}"} for e in examples]
    return out if isinstance(eval_dataset, dict) else out["eval"]


def _flat(evals) -> list:
    if evals is None:
        return []
    return [e for part in evals.values() for e in part] if isinstance(evals, dict) else list(evals)


def _as_datasets(evals):
    from datasets import Dataset

    if evals is None:
        return None
    if isinstance(evals, dict):
        return {k: Dataset.from_list(v) for k, v in evals.items()}
    return Dataset.from_list(evals)


