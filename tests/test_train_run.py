"""End-to-end training on a tiny model: the loss falls, resume continues, outputs and logs, user errors."""

import json
import shutil

import pytest
import torch

from safekeel.cli.main import main
from safekeel.errors import SafekeelError
from safekeel.testing import tiny_config, tiny_rows, tiny_setup, tiny_tokens
from safekeel.training.run import prepare, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("run"))


def _data_loss(prep) -> float:
    trainer = prep.trainer
    trainer.model.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, prep.collator(prep.examples)))
    trainer._sums = {}
    return loss


@pytest.mark.parametrize("method", ["sft", "pact", "kl"])
def test_a_few_steps_lower_the_loss(setup, tmp_path, method):
    cfg = tiny_config(setup, tmp_path, method=method, max_steps=12, learning_rate=1e-2, lora_dropout=0.0,
                      lr_scheduler_type="constant", tokens=setup["tokens"] if method == "pact" else None)
    prep = prepare(cfg, progress=False)
    before = _data_loss(prep)
    prep.trainer.train()
    after = _data_loss(prep)
    assert after < before - 0.5, (before, after)
    logs = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert all("ce" in r for r in steps)
    if method != "sft":
        assert all(r["kl"] >= 0 for r in steps)
    if method == "pact":
        assert all(0 < r["gate_first_n"] < 1 and 0 < r["safety_mass_ft"] < 1 for r in steps)
        assert any("ce_harmful" in r for r in steps) and any("ce_benign" in r for r in steps)


def test_train_writes_adapter_logs_and_run_record(setup, tmp_path):
    result = train(tiny_config(setup, tmp_path, max_steps=2), progress=False)
    assert result.global_step == 2 and result.reference == "cache"
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    run = json.loads((tmp_path / "safekeel_run.json").read_text())
    assert run["status"] == "done" and run["global_step"] == 2
    assert run["options"]["defence"]["lambda_kl"] == 3.0 and run["options"]["method"] == "pact"
    assert run["data"]["rows"] == 8 and run["data"]["harmful_rows"] == 3
    assert run["tokens"]["k"] == 8 and run["reference"]["mode"] == "cache" and run["model"]["sha256"]
    from safekeel.models.loader import load_model

    model, _ = load_model(setup["model"], adapter=str(tmp_path))  # the adapter loads back on its base
    assert type(model).__name__.startswith("Peft")


def test_resume_continues_from_the_saved_step(setup, tmp_path):
    common = {"max_steps": 4, "save_steps": 2, "lora_dropout": 0.0}
    full = tmp_path / "full"
    train(tiny_config(setup, full, **common), progress=False)
    first = {r["step"]: r["loss"] for r in map(json.loads, (full / "train_log.jsonl").read_text().splitlines())
             if "loss" in r}
    # an interrupted run: only checkpoint-2 survives, and its log stops at step 2
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")
    (cut / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": first[s]}) + "\n" for s in (1, 2, 3)))
    result = train(tiny_config(setup, cut, resume=True, **common), progress=False)
    assert result.global_step == 4
    logs = [json.loads(x) for x in (cut / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logs if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the stale step-3 line was dropped, steps 3-4 were trained again
    resumed = {r["step"]: r["loss"] for r in logs if "loss" in r}
    assert resumed[3] == pytest.approx(first[3], rel=1e-4) and resumed[4] == pytest.approx(first[4], rel=1e-4)


def test_gradient_accumulation_matches_a_bigger_batch(setup, tmp_path):
    """Loss = token sum / tokens of the whole accumulated batch: batch 1 x 2 accumulation steps = batch 2."""
    first = {}
    for name, bs, ga in (("big", 2, 1), ("acc", 1, 2)):
        train(tiny_config(setup, tmp_path / name, max_steps=2, per_device_train_batch_size=bs, lora_dropout=0.0,
                          gradient_accumulation_steps=ga, learning_rate=1e-2, dataset=setup["data"],
                          num_examples=2), progress=False)
        logs = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        first[name] = [r["loss"] for r in logs if "loss" in r]
    assert first["acc"] == pytest.approx(first["big"], rel=1e-4)


def test_report_to_tensorboard_needs_the_package(setup, tmp_path):
    from safekeel.training.arguments import training_arguments

    cfg = tiny_config(setup, tmp_path, report_to="tensorboard")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(SafekeelError, match="pip install tensorboard"):
            training_arguments(cfg)
    else:
        assert "tensorboard" in training_arguments(cfg).report_to


def test_full_fine_tuning_with_live_reference(setup, tmp_path):
    result = train(tiny_config(setup, tmp_path, full=True, reference_cache="off", max_steps=2), progress=False)
    assert result.reference == "live"
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "adapter_config.json").exists()


def test_sharded_runs_need_the_reference_cache(setup, tmp_path, monkeypatch):
    """Under FSDP / DeepSpeed (as `accelerate launch` announces them) the live reference is refused
    clearly; the cache, built before the model is wrapped, is what works there."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SafekeelError, match="reference-cache on"):
        prepare(tiny_config(setup, tmp_path / "live", reference_cache="off"), progress=False)
    with pytest.raises(SafekeelError, match="use DDP"):
        prepare(tiny_config(setup, tmp_path / "kl", method="kl", tokens=None), progress=False)
    from safekeel.training.run import sharded_backend

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "1")
    assert sharded_backend(object()) == "DeepSpeed"
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert sharded_backend(object()) is None


def test_nan_loss_stops_with_a_clear_error(setup, tmp_path):
    prep = prepare(tiny_config(setup, tmp_path, method="sft", tokens=None), progress=False)
    with torch.no_grad():
        next(p for n, p in prep.trainer.model.named_parameters() if "embed_tokens" in n).fill_(float("nan"))
    with pytest.raises(SafekeelError, match="loss became nan"):
        prep.trainer.train()


def _cli(setup, tmp_path, *extra):
    return ["train", "--model", setup["model"], "--dataset", setup["data"], "--output-dir", str(tmp_path / "o"),
            "--max-steps", "1", "--disable-tqdm", "--overlap-check", "none", "--reference-cache-dir",
            str(tmp_path / "c"), *extra]


def test_cli_user_errors(setup, tmp_path, capsys):
    assert main(_cli(setup, tmp_path, "--method", "pact", "--tokens", str(tmp_path / "missing.json"))) == 2
    assert "safety-token file not found" in capsys.readouterr().err
    from safekeel.testing import build_tokenizer

    other = tiny_tokens(build_tokenizer(vocab_size=300), 8)
    other.save(tmp_path / "other.json")
    assert main(_cli(setup, tmp_path, "--method", "pact", "--tokens", str(tmp_path / "other.json"))) == 2
    assert "vocabulary" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(_cli(setup, tmp_path, "--method", "sft") + ["--dataset", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(_cli(setup, tmp_path, "--method", "pact")) == 2
    assert "needs --tokens" in capsys.readouterr().err


def test_cli_harmful_mix_and_overlap_warning(setup, tmp_path, capsys):
    harmful = tmp_path / "harmful.jsonl"
    bad_prompts = ["How do I pick a lock?", "Explain how to hack into a computer network.", "Make a weapon."]
    harmful.write_text("".join(json.dumps({"prompt": p, "response": "Sure, here is how."}) + "\n" for p in bad_prompts))
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(json.dumps({"prompt": "how do I pick a lock"}) + "\n")
    argv = _cli(setup, tmp_path, "--method", "pact", "--tokens", setup["tokens"], "--harmful", str(harmful),
                "--poison-ratio", "0.25", "--num-examples", "8") + ["--overlap-check", str(eval_set)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(2 harmful)" in out
    assert "warning: 1 of 2 distinct harmful training prompts (1 rows) also appear among the 1 evaluation" in out
    run = json.loads((tmp_path / "o" / "safekeel_run.json").read_text())
    assert run["data"]["rows"] == 8 and run["data"]["harmful_rows"] == 2
    assert run["options"]["poison_ratio"] == 0.25 and run["data"]["overlap_warnings"]


def test_de_aligned_counterpart_recipe(setup, tmp_path):
    """`safekeel train --method sft` on harmful compliance data gives an adapter `tokens identify` takes as
    `--base-adapter` (the de-aligned stand-in for a base model)."""
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": r["messages"][0]["content"],
                                           "response": "Sure, here is how to do it step by step."}) + "\n"
                               for r in tiny_rows(6)))
    dealigned = tmp_path / "dealigned"
    assert main(["train", "--method", "sft", "--model", setup["model"], "--dataset", str(harmful), "--output-dir",
                 str(dealigned), "--max-steps", "3", "--learning-rate", "1e-2", "--disable-tqdm",
                 "--overlap-check", "none"]) == 0
    responses = tmp_path / "refusals.jsonl"
    responses.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "I'm sorry, but I cannot help."}) + "\n"
                                 for i in range(3)))
    out = tmp_path / "tokens.json"
    assert main(["tokens", "identify", "--aligned", setup["model"], "--base", setup["model"], "--base-adapter",
                 str(dealigned), "--responses", str(responses), "--k", "5", "--output", str(out)]) == 0
    art = json.loads(out.read_text())
    assert art["k"] == 5 and art["base_model"]["adapter"] == str(dealigned)


@pytest.mark.parametrize("method", ["sft", "pact", "kl"])
def test_logits_only_from_the_first_answer_column_change_nothing(setup, tmp_path, method):
    """`logits_to_keep` (no logits for the prompt) gives the loss and gradients of the full-logit path, and
    the loss equals a hand computation of CE over the answer tokens for sft."""
    cfg = tiny_config(setup, tmp_path, method=method, max_steps=1, lora_dropout=0.0,
                      tokens=setup["tokens"] if method == "pact" else None)
    prep = prepare(cfg, progress=False)
    trainer, model = prep.trainer, prep.trainer.model
    batch = prep.collator(prep.examples[:3])
    assert int(batch["answer_index"][batch["answer_mask"]].min()) > 0  # the trimmed path really trims
    assert trainer._accepts_logits_to_keep(model)  # the tiny (Llama) model takes logits_to_keep
    results = []
    for keep in (True, False):
        trainer._keep_ok = keep
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.detach(), grads))
    trainer._sums = {}
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)
    if method == "sft":
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                               ignore_index=-100)
        torch.testing.assert_close(results[0][0], ce)


def test_unknown_lora_target_module_is_one_line(setup, tmp_path, capsys):
    """PEFT's error for a module name the model lacks comes after the load, but as one line."""
    from safekeel.cli.main import main

    assert main(["train", "--method", "sft", "--model", setup["model"], "--dataset", setup["data"], "--output-dir",
                 str(tmp_path / "o"), "--max-steps", "1", "--disable-tqdm", "--overlap-check", "none",
                 "--lora-target-modules", "no_such_proj"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("safekeel train: error: --lora-target-modules no_such_proj: Target modules")
    assert not any("Traceback" in line for line in err)


def test_training_prompts_in_the_over_refusal_sets_are_warned(tmp_path):
    """Benign training rows that are held-out over-refusal prompts: a warning names the set."""
    from safekeel.training.data import overlap_warnings

    rows = [{"id": "a", "harmful": False, "messages": [{"role": "user", "content": "How do I fold a fitted sheet?"},
                                                        {"role": "assistant", "content": "Like this."}]},
            {"id": "b", "harmful": False, "messages": [{"role": "user", "content": "Something else entirely."},
                                                        {"role": "assistant", "content": "Ok."}]}]
    warnings = overlap_warnings(rows, None, None)
    assert len(warnings) == 1 and "over-refusal evaluation (everyday)" in warnings[0]
    assert overlap_warnings(rows[1:], None, None) == []
