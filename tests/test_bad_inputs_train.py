"""Bad `safekeel train` arguments: exit 2, one line on stderr naming the problem, no traceback, nothing
written, and all of it before a model is loaded or anything downloaded.

The base command leaves `--overlap-check` at its default (harmbench, i.e. HarmBench and StrongREJECT: downloads): every row must fail
before that download would happen (the suite's download guard would fail the test otherwise).
"""

import json
from pathlib import Path

import pytest

from safekeel.locking import LOCK_NAME
from safekeel.testing import tiny_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("bad-train"))


def _tokens_with(setup, tmp_path, **fields):
    data = json.loads(Path(setup["tokens"]).read_text())
    data.update(fields)
    path = tmp_path / "bad_tokens.json"
    path.write_text(json.dumps(data))
    return path


def _run_dir(tmp_path, *names):
    out = tmp_path / "out"
    out.mkdir()
    for name in names:
        (out / name).mkdir() if name.startswith("checkpoint-") else (out / name).write_text("{}")
    return out


# (id, extra argv (later flags override the base's), message, what to put on disk first)
CASES = [
    ("lr-nan", ["--learning-rate", "nan"], "--learning-rate must be a finite number", None),
    ("lr-inf", ["--learning-rate", "inf"], "--learning-rate must be a finite number", None),
    ("lr-negative", ["--learning-rate", "-1"], "--learning-rate must be positive", None),
    ("lambda-inf", ["--lambda", "inf"], "--lambda-kl must be a finite number", None),
    ("dropout-nan", ["--lora-dropout", "nan"], "--lora-dropout must be a finite number", None),
    ("epochs-inf", ["--num-train-epochs=-inf"], "--num-train-epochs must be a finite number", None),
    ("extra-nan", ["--training-arg", "adam_epsilon=nan"], "--adam-epsilon must be a finite number", None),
    ("poison-ratio-2", ["--poison-ratio", "2"], "--poison-ratio must be between 0 and 1", None),
    ("max-steps-text", ["--max-steps", "many"], "invalid int value", None),
    ("unknown-flag", ["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag", None),
    ("unknown-yaml-key", ["--config", "{tmp}/c.yaml"], "unknown option(s): not_an_option", "yaml_unknown"),
    ("config-bad-yaml", ["--config", "{tmp}/c.yaml"], "is not valid YAML", "yaml_bad"),
    ("config-not-mapping", ["--config", "{tmp}/c.yaml"], "must be a mapping", "yaml_list"),
    ("config-missing", ["--config", "{tmp}/nope.yaml"], "cannot read --config", None),
    ("training-arg-no-equals", ["--training-arg", "eval_strategy"], "expects KEY=VALUE", None),
    ("training-arg-bad-value", ["--training-arg", "eval_strategy=bogus-value"], "bad training arguments", None),
    ("training-arg-eval-steps", ["--training-arg", "eval_strategy=steps"], "has no evaluation set", None),
    ("training-arg-unknown", ["--training-arg", "no_such_field=1"], "unknown option(s): no_such_field", None),
    ("output-dir-is-file", ["--output-dir", "{tmp}/file.txt"], "is a file, not a directory", "file"),
    ("output-dir-holds-run", [], "already holds a training run", "old_run"),
    ("output-dir-not-empty", [], "is not empty (notes.txt)", "unrelated"),
    ("resume-no-checkpoint", ["--resume"], "no checkpoint in", None),
    ("resume-missing-path", ["--resume", "{tmp}/nowhere"], "checkpoint directory not found", None),
    ("resume-partial-only", ["--resume"], "no complete checkpoint", "partial"),
    ("resume-and-overwrite", ["--resume", "--overwrite"], "exclusive", None),
    ("tokens-missing", ["--tokens", "{tmp}/missing.json"], "safety-token file not found", None),
    ("tokens-not-json", ["--tokens", "{tmp}/bad_tokens.json"], "--tokens", "tokens_cut"),
    ("tokens-wrong-types", ["--tokens", "{tmp}/bad_tokens.json"], "bad_tokens.json", "tokens_types"),
    ("tokens-not-object", ["--tokens", "{tmp}/bad_tokens.json"], "bad_tokens.json", "tokens_list"),
    ("tokens-k-too-big", ["--k", "100"], "top 100 safety tokens", None),
    ("model-not-found", ["--model", "{tmp}/no/such/model"], "model path not found", None),
    ("model-without-config", ["--model", "{tmp}"], "has no config.json", None),
    ("model-unknown-name", ["--model", "not-a-model"], "unknown model", None),
    ("dataset-missing", ["--dataset", "{tmp}/missing.jsonl"], "--dataset: file not found", None),
    ("harmful-missing", ["--harmful", "{tmp}/missing.jsonl"], "file not found", None),
    ("overlap-unknown", ["--overlap-check", "nope"], "unknown prompt set", None),
    ("cache-dir-is-file", ["--reference-cache-dir", "{tmp}/file.txt"], "is a file", "file"),
    ("dataset-empty", ["--dataset", "{tmp}/empty.jsonl"], "--dataset {tmp}/empty.jsonl is empty", "empty_data"),
    ("seed-negative", ["--seed", "-1"], "--seed must be between 0 and 2**32 - 1", None),
    ("lora-r-zero", ["--lora-r", "0"], "--lora-r must be positive", None),
    ("lora-alpha-zero", ["--lora-alpha", "0"], "--lora-alpha must be positive", None),
    ("report-to-missing-package", ["--report-to", "wandb"], "--report-to wandb needs the wandb package", None),
    ("report-to-unknown", ["--report-to", "nosuch"], "--report-to: unknown integration 'nosuch'", None),
    ("workers-negative", ["--dataloader-num-workers", "-1"], "--dataloader-num-workers must be >= 0", None),
    ("reference-batch-zero", ["--reference-batch-size", "0"], "--reference-batch-size must be positive", None),
    ("tolerance-above-1", ["--safety-tolerance", "1.5"], "--safety-tolerance must be between 0 and 1", None),
    ("tolerance-negative", ["--safety-tolerance=-0.1"], "--safety-tolerance must be between 0 and 1", None),
    ("rollback-without-tolerance", ["--safety-rollback"], "--safety-rollback needs --safety-tolerance", None),
    ("tolerance-monitor-off", ["--safety-tolerance", "0.1", "--monitor-steps", "0"], "needs the monitor", None),
    ("monitor-steps-negative", ["--monitor-steps=-1"], "--monitor-steps must be >= 0", None),
    ("monitor-probe-zero", ["--monitor-probe-prompts", "0"], "--monitor-probe-prompts must be positive", None),
    ("max-rollbacks-zero", ["--max-rollbacks", "0"], "--max-rollbacks must be positive", None),
    ("rollback-factor-zero", ["--rollback-lr-factor", "0"], "--rollback-lr-factor must be in (0, 1]", None),
    ("monitor-prompts-missing", ["--monitor-prompts", "{tmp}/missing.jsonl"], "--monitor-prompts: file not found", None),
    ("monitor-prompts-empty", ["--monitor-prompts", "{tmp}/empty.jsonl"], "--monitor-prompts {tmp}/empty.jsonl is empty",
     "empty_data"),
    ("monitor-prompts-unknown", ["--monitor-prompts", "nope"], "--monitor-prompts: unknown prompt set", None),
]


def _prepare(kind, setup, tmp_path):
    if kind == "file":
        (tmp_path / "file.txt").write_text("x")
    elif kind == "yaml_unknown":
        (tmp_path / "c.yaml").write_text("not_an_option: 1\n")
    elif kind == "yaml_bad":
        (tmp_path / "c.yaml").write_text("learning_rate: [1e-4\n")
    elif kind == "yaml_list":
        (tmp_path / "c.yaml").write_text("- a\n- b\n")
    elif kind == "old_run":
        _run_dir(tmp_path, "safekeel_run.json", "train_log.jsonl", "checkpoint-2")
    elif kind == "unrelated":
        _run_dir(tmp_path, "notes.txt")
    elif kind == "partial":
        _run_dir(tmp_path, "checkpoint-2")  # a checkpoint folder without trainer_state.json or weights
    elif kind == "tokens_cut":
        (tmp_path / "bad_tokens.json").write_text(Path(setup["tokens"]).read_text()[:50])
    elif kind == "tokens_types":
        _tokens_with(setup, tmp_path, token_ids=["a"] * 8)
    elif kind == "empty_data":
        (tmp_path / "empty.jsonl").write_text("\n")
    elif kind == "tokens_list":
        (tmp_path / "bad_tokens.json").write_text("[1, 2, 3]")


@pytest.mark.parametrize("extra, message, kind", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_train_argument(setup, tmp_path, expect_usage_error, extra, message, kind):
    _prepare(kind, setup, tmp_path)
    argv = ["train", "--method", "pact", "--model", setup["model"], "--dataset", setup["data"], "--tokens",
            setup["tokens"], "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--disable-tqdm"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    message = message.replace("{tmp}", str(tmp_path))
    err = expect_usage_error(argv, message, watch=[Path(setup["data"]).parent])
    assert not (tmp_path / "out" / LOCK_NAME).exists(), err  # refused before the lock
