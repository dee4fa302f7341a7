"""`SafetySFTTrainer` (safekeel.integrations.trl): TRL's SFTTrainer with a defence gives `safekeel train`'s
loss on the same batch and weights (live and cached reference), trains, keeps TRL's logs, runs the
defences with a data plan (lisa, token_weighted) on `safekeel train`'s batches with the same per-step
losses, and refuses bad inputs with one SafekeelError line."""

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from safekeel.errors import SafekeelError
from safekeel.integrations.trl import SafetySFTTrainer
from safekeel.testing import build_tokenizer, tiny_config, tiny_setup, tiny_tokens
from safekeel.training.run import prepare

LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("trl"))


def sft_config(out, **over):
    values = {"output_dir": str(out), "bf16": False, "use_cpu": True, "report_to": "none", "disable_tqdm": True,
              "save_strategy": "no", "max_steps": 3, "logging_steps": 1, "per_device_train_batch_size": 2,
              "learning_rate": 1e-2, "lr_scheduler_type": "constant", "gradient_checkpointing": False, **over}
    return SFTConfig(**values)


def trl_trainer(setup, out, *, rows=None, full=False, args=None, **kw):
    model = AutoModelForCausalLM.from_pretrained(setup["model"])
    tok = AutoTokenizer.from_pretrained(setup["model"])
    kw.setdefault("reference_cache_dir", str(out / "refcache"))
    return SafetySFTTrainer(model=model, args=args or sft_config(out), processing_class=tok,
                            train_dataset=Dataset.from_list(rows if rows is not None else setup["rows"]),
                            peft_config=None if full else LoraConfig(**LORA), **kw)


def _perturb(model):
    """Move the trainable weights off the reference (LoRA B starts at zero, so the KL would be ~0)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _loss_and_grads(trainer, batch):
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    trainer._sums = {}
    loss = trainer.compute_loss(model, batch, num_items_in_batch=batch["answer_mask"].sum())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {k: v.clone() for k, v in trainer._sums.items()}


CASES = {  # name: (safekeel train options, SafetySFTTrainer options)
    "pact-cache": ({"method": "pact", "reference_cache": "on"}, {"defence": "pact", "reference": "cache"}),
    "pact-live": ({"method": "pact", "reference_cache": "off"}, {"defence": "pact", "reference": "live"}),
    "pact-live-full": ({"method": "pact", "reference_cache": "off", "full": True},
                       {"defence": "pact", "reference": "live", "full": True}),
    "pact-refcode-mass": ({"method": "pact", "preset": "reference-code", "temperature": 1, "safety_mass": True},
                          {"defence": "pact", "defence_options": {"preset": "reference-code", "temperature": 1,
                                                                  "safety-mass": True}}),
    "sft": ({"method": "sft", "tokens": None}, {"defence": "sft"}),
    "kl": ({"method": "kl", "tokens": None, "lambda": 0.5}, {"defence": "kl", "defence_options": {"lambda": 0.5}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_batch_same_loss_as_safekeel_train(setup, tmp_path, case):
    sk_options, trl_options = CASES[case]
    flat = {"lora_dropout": 0.0, "per_device_train_batch_size": 4, "max_steps": 1, **sk_options}
    sk = prepare(tiny_config(setup, tmp_path / "sk", **flat), progress=False).trainer
    tokens = setup["tokens"] if sk_options["method"] == "pact" else None
    tr = trl_trainer(setup, tmp_path / "trl", tokens=tokens, **trl_options)
    want_mode = {"sft": "none", "kl": "live"}.get(case, trl_options.get("reference", "cache"))
    assert tr.safekeel_summary["reference"] == want_mode
    _perturb(sk.model)
    sk_params = dict(sk.model.named_parameters())
    trl_params = dict(tr.model.named_parameters())
    assert set(sk_params) == set(trl_params)
    with torch.no_grad():  # the same weights in both (LoRA A is drawn at random by each)
        for name, p in trl_params.items():
            p.copy_(sk_params[name])
    sk_batch = sk.data_collator([sk.train_dataset[i] for i in range(4)])
    trl_batch = tr.data_collator([tr.train_dataset[i] for i in range(4)])
    assert set(sk_batch) == set(trl_batch)
    for key, value in sk_batch.items():  # the same tokens, views and (cached) reference logits
        torch.testing.assert_close(trl_batch[key], value, msg=key)
    loss_sk, grads_sk, stats_sk = _loss_and_grads(sk, sk_batch)
    loss_trl, grads_trl, stats_trl = _loss_and_grads(tr, trl_batch)
    torch.testing.assert_close(loss_trl, loss_sk)
    assert set(grads_trl) == set(grads_sk)
    for name, g in grads_sk.items():
        torch.testing.assert_close(grads_trl[name], g, msg=name)
    assert set(stats_trl) == set(stats_sk) and "ce" in stats_sk
    for name, value in stats_sk.items():
        torch.testing.assert_close(stats_trl[name], value, msg=name)
    if case.startswith("pact") or case == "kl":
        assert float(stats_sk["kl"][0, 0]) > 1e-4  # the fine-tuned weights really differ from the reference


@pytest.mark.parametrize("defence", ["pact", "sft", "kl", "constrained_sft"])
def test_a_few_steps_train_and_keep_trls_logs(setup, tmp_path, defence):
    tr = trl_trainer(setup, tmp_path, defence=defence, tokens=setup["tokens"] if defence == "pact" else None,
                     args=sft_config(tmp_path, gradient_checkpointing=True))  # TRL's default
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    result = tr.train()
    assert result.global_step == 3
    after = dict(tr.model.named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(after[n], p)]
    assert changed and all("lora_" in n for n in changed)  # LoRA through TRL's peft_config
    steps = [r for r in tr.state.log_history if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:  # safekeel's stats beside TRL's own metrics
        assert {"ce", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm"} <= set(r)
        if defence in ("pact", "kl"):
            assert r["kl"] >= 0
    if defence == "constrained_sft":
        assert "cs_weight" in steps[0]
    tr.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("defence, inputs, logged", [
    ("freeze", {}, "frozen_layers"),  # configure_model
    ("asft", {"base": "base"}, "step_term"),  # setup with --base, step_loss
    ("safegrad", {"safety_data": "safety"}, "safegrad_cos"),  # before_optimizer_step on safety batches
    ("ewc", {"safety_data": "safety"}, "ewc_penalty"),  # a Fisher estimate on safety data, step_loss
    ("safelora", {"base": "base"}, None),  # after_train: the projection report
])
def test_defences_with_other_hooks_run_through_trl(setup, tmp_path, defence, inputs, logged):
    tr = trl_trainer(setup, tmp_path, defence=defence, **{k: setup[v] for k, v in inputs.items()},
                     args=sft_config(tmp_path, max_steps=2))
    tr.train()
    steps = [r for r in tr.state.log_history if "loss" in r]
    assert len(steps) == 2 and all("ce" in r for r in steps)
    if logged:
        assert all(logged in r for r in steps)
    else:
        assert tr.defence.report["layers_total"] > 0 and (tmp_path / "safelora_projection.json").is_file()


def test_prompt_completion_rows_and_evaluation(setup, tmp_path):
    """TRL's conversational prompt-completion format gives the same examples as `messages`; an eval set is
    cached with the training rows, and evaluation's stats stay out of the training logs."""
    pc = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "harmful": r["harmful"]}
          for r in setup["rows"]]
    args = sft_config(tmp_path, per_device_eval_batch_size=4)
    tr = trl_trainer(setup, tmp_path, rows=pc, tokens=setup["tokens"], args=args,
                     eval_dataset=Dataset.from_list(pc[:4]))
    msgs = trl_trainer(setup, tmp_path / "m", tokens=setup["tokens"])
    assert tr.train_dataset["input_ids"] == msgs.train_dataset["input_ids"]
    assert tr.safekeel_summary["reference"] == "cache"
    tr._sums = {"ce": torch.zeros(3, 2)}
    metrics = tr.evaluate()
    assert metrics["eval_loss"] > 0 and "eval_mean_token_accuracy" in metrics
    assert set(tr._sums) == {"ce"}
    with pytest.raises(SafekeelError, match="pass eval_dataset when building the trainer"):
        tr.evaluate(Dataset.from_list(pc[:2]))
    live = trl_trainer(setup, tmp_path / "live", tokens=setup["tokens"], reference="live")
    assert live.evaluate(Dataset.from_list(pc[:2]))["eval_loss"] > 0


def test_a_model_path_is_loaded_as_trl_loads_it(setup, tmp_path):
    tr = SafetySFTTrainer(model=setup["model"], args=sft_config(tmp_path, max_steps=1), defence="sft",
                          train_dataset=setup["rows"], peft_config=LoraConfig(**LORA))  # a list of rows works too
    assert tr.safekeel_summary["reference"] == "none" and tr.processing_class.chat_template
    assert tr.train().global_step == 1


@pytest.mark.parametrize("rows, kw, message", [
    ([{"text": "hello"}], {}, "needs a conversational dataset"),
    ([{"prompt": "2 + 2?", "completion": "4"}], {}, "plain text"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], {}, "no assistant turn"),
    (None, {"tokens": None}, "defence 'pact' needs tokens="),
    (None, {"defence_options": {"lambda_": 3}}, "unknown defence option 'lambda_'"),
    (None, {"defence": "lisa", "safety_data": "/does/not/exist.jsonl"}, "safety_data: file not found"),
    (None, {"defence": "token_weighted", "safety_data": "/does/not/exist.jsonl"}, "safety_data: file not found"),
    (None, {"defence": "asft"}, "defence 'asft' needs base="),
    (None, {"defence": "kl", "reference": "cache"}, "computed live"),
    (None, {"args": "packing"}, "packing=True"),
    (None, {"data_collator": object()}, "does not take data_collator"),
])
def test_bad_inputs_are_one_line_errors(setup, tmp_path, rows, kw, message):
    kw = {"tokens": setup["tokens"], **kw}
    if kw.get("args") == "packing":
        kw["args"] = sft_config(tmp_path, packing=True)
    with pytest.raises(SafekeelError, match=message) as err:
        trl_trainer(setup, tmp_path, rows=rows, **kw)
    assert "\n" not in str(err.value)


# -- defences with a data plan (extra rows on a schedule) ------------------------------------------------
PLANNED = {  # name: (defence options, the schedule's sources for steps 0..3)
    "lisa": ({"lisa_alignment_steps": 1, "lisa_finetune_steps": 2, "lisa_rho": 1.0},
             ["safety", "main", "main", "safety"]),
    "token_weighted": ({"token_weighted_weight": 3, "token_weighted_every": 2}, ["safety", "main", "safety", "main"]),
}


def _planned_logs(trainer) -> list[dict]:
    return [r for r in trainer.state.log_history if "loss" in r]


@pytest.mark.parametrize("defence", list(PLANNED))
def test_data_plan_defences_train_through_trl(setup, tmp_path, defence):
    """No longer refused: the safety rows join the training set and each step draws from its scheduled source."""
    options, sources = PLANNED[defence]
    tr = trl_trainer(setup, tmp_path, defence=defence, defence_options=options, safety_data=setup["safety"],
                     args=sft_config(tmp_path, max_steps=4))
    assert tr.safekeel_summary["plan"] == {"main": 8, "safety": 6} and tr.safekeel_summary["reference"] == "none"
    assert len(tr.train_dataset) == 14 and tr.batch_plan is not None
    assert [tr.batch_plan.source_of(s) for s in range(4)] == sources
    for step, indices in enumerate(tr.batch_plan):  # every micro-batch of a step from its source's rows
        assert all((i >= 8) == (sources[step] == "safety") for i in indices)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    assert tr.train().global_step == 4
    after = dict(tr.model.named_parameters())
    assert [n for n, p in before.items() if not torch.equal(after[n], p)]
    logs = _planned_logs(tr)
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and all("ce" in r and "entropy" in r for r in logs)
    safety = [s == "safety" for s in sources]
    if defence == "lisa":
        assert [r["lisa_alignment"] for r in logs] == [float(x) for x in safety]
        assert logs[2]["step_term"] > 0  # step 2 is inside the state that began at step 1: pulled to its θ̃
    else:
        assert all((r["tw_span"] > 0) == x for r, x in zip(logs, safety))
        assert all(r["tw_weight"] == pytest.approx(1 + 2 * r["tw_span"]) for r in logs)


@pytest.mark.parametrize("defence", list(PLANNED))
def test_data_plan_defences_match_safekeel_train_step_by_step(setup, tmp_path, defence):
    """Same data, seed, options and weights: the TRL path draws the same batches (the same sources, rows and
    order) and logs the same per-step loss, CE, defence stats and gradient norm as `safekeel train`."""
    options, sources = PLANNED[defence]
    cfg = tiny_config(setup, tmp_path / "sk", method=defence, tokens=None, safety_data=setup["safety"], max_steps=4,
                      lora_dropout=0.0, monitor_steps=0, seed=3, **options)
    sk = prepare(cfg, progress=False).trainer
    args = copy.copy(sk.args)  # the same hyperparameters (converted to an SFTConfig as TRL converts them)
    args.output_dir = str(tmp_path / "trl")
    tr = trl_trainer(setup, tmp_path / "trl", defence=defence, defence_options=options, safety_data=setup["safety"],
                     args=args)
    sk_params, trl_params = dict(sk.model.named_parameters()), dict(tr.model.named_parameters())
    assert set(sk_params) == set(trl_params)
    with torch.no_grad():  # the same weights in both (LoRA A is drawn at random by each)
        for name, p in trl_params.items():
            p.copy_(sk_params[name])
    if defence == "lisa":  # θ̃ before the first switch: the weights training starts from, now the copied ones
        tr.defence.anchor = [p.detach().clone() for _, p in tr.defence.params]
    assert [tr.batch_plan.source_of(s) for s in range(4)] == [sk.batch_plan.source_of(s) for s in range(4)] == sources
    assert list(tr.batch_plan) == list(sk.batch_plan)  # the same dataset indices, step by step
    sk_batches, trl_batches = list(sk.get_train_dataloader()), list(tr.get_train_dataloader())
    assert len(sk_batches) == len(trl_batches) == 4
    for a, b in zip(sk_batches, trl_batches):  # the same rows behind those indices
        assert set(a) == set(b)
        for key, value in a.items():
            torch.testing.assert_close(b[key], value, msg=key)
    sk.train()
    tr.train()
    sk_logs, trl_logs = _planned_logs(sk), _planned_logs(tr)
    assert [r["step"] for r in trl_logs] == [r["step"] for r in sk_logs] == [1, 2, 3, 4]
    keys = ["loss", "ce", "grad_norm", *(["lisa_alignment", "step_term"] if defence == "lisa" else
                                         ["tw_weight", "tw_span"])]
    for key in keys:
        torch.testing.assert_close(torch.tensor([r[key] for r in trl_logs], dtype=torch.float64),
                                   torch.tensor([r[key] for r in sk_logs], dtype=torch.float64), msg=key)
    if defence == "lisa":
        assert sk_logs[2]["step_term"] > 0  # the proximal term was really compared
    for name, p in dict(sk.model.named_parameters()).items():  # and the weights after the 4 steps
        torch.testing.assert_close(dict(tr.model.named_parameters())[name], p, msg=name)


def test_tokens_of_another_tokenizer_are_refused(setup, tmp_path):
    other = tmp_path / "other.json"
    tiny_tokens(build_tokenizer(vocab_size=300), 8).save(other)
    with pytest.raises(SafekeelError, match="vocabulary"):
        trl_trainer(setup, tmp_path, tokens=str(other))
