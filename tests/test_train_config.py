"""Options of `safekeel train`: presets, ablation switches, flag spellings, YAML layering, bad combinations."""

import pytest

from safekeel.cli.main import build_parser
from safekeel.cli.train_cmd import flat_options
from safekeel.defences.pact import PactOptions
from safekeel.errors import SafekeelError
from safekeel.training.config import build_config

PRESETS = PactOptions.PRESETS

REQ = {"model": "m", "dataset": "d", "output_dir": "o", "tokens": "t.json"}


def parse(argv):
    return build_config(flat_options(build_parser().parse_args(["train"] + argv)))


def test_paper_defaults():
    cfg = build_config(REQ)
    p, t, lo = cfg.defence, cfg.training, cfg.lora
    assert cfg.method == "pact" and p.preset == "paper"
    assert (p.lambda_kl, p.n, p.tau, p.threshold, p.temperature, p.gate_scale, p.gate_bias) == (3.0, 8, 8.0, 0.9, 1.0, 1.0, 0.0)
    assert p.weights and p.calibration and p.decay and not p.safety_mass and p.kl_scope == "safety"
    assert (t.learning_rate, t.num_train_epochs, t.per_device_train_batch_size) == (3e-5, 3.0, 2)
    assert (lo.lora_r, lo.lora_alpha, lo.lora_target_modules, lo.full) == (8, 16, "all-linear", False)
    assert p.post_positions() == 8 + 6 * 8


def test_reference_code_preset_and_overrides():
    cfg = build_config({**REQ, "preset": "reference-code"})
    assert (cfg.defence.temperature, cfg.defence.gate_scale, cfg.defence.gate_bias) == (2.0, 2.0, 0.0)
    assert PRESETS["reference-code"]["n"] == 8 and PRESETS["reference-code"]["tau"] == 8.0
    cfg = build_config({**REQ, "preset": "reference-code", "gate_bias": 0.1, "temperature": 1, "safety_mass": "on"})
    assert cfg.defence.gate_bias == 0.1 and cfg.defence.temperature == 1.0 and cfg.defence.safety_mass


def test_dash_and_underscore_flags_are_the_same():
    a = parse(["--model", "m", "--dataset", "d", "--output-dir", "o", "--tokens", "t", "--max-steps", "7",
               "--learning-rate", "1e-4", "--per-device-train-batch-size", "4", "--lambda", "5", "--kl-scope",
               "safety", "--gate-scale", "3", "--bf16", "--lora-r", "16", "--num-train-epochs", "1"])
    b = parse(["--model", "m", "--dataset", "d", "--output_dir", "o", "--tokens", "t", "--max_steps", "7",
               "--learning_rate", "1e-4", "--per_device_train_batch_size", "4", "--lambda_kl", "5", "--kl_scope",
               "safety", "--gate_scale", "3", "--bf16", "true", "--lora_r", "16", "--num_train_epochs", "1"])
    assert a.to_dict() == b.to_dict()
    assert a.training.max_steps == 7 and a.training.learning_rate == 1e-4 and a.training.bf16
    assert a.defence.lambda_kl == 5.0 and a.defence.gate_scale == 3.0 and a.lora.lora_r == 16


def test_ablation_switches():
    cfg = parse(["--model", "m", "--dataset", "d", "--output-dir", "o", "--tokens", "t", "--weights", "off",
                 "--calibration", "on", "--decay", "off", "--safety-mass", "on"])
    assert not cfg.defence.weights and cfg.defence.calibration and not cfg.defence.decay and cfg.defence.safety_mass
    assert cfg.defence.post_positions() is None  # no decay: the no-prompt view covers every answer position
    rung1 = build_config({**REQ, "kl_scope": "full"})
    assert (rung1.defence.weights, rung1.defence.calibration, rung1.defence.decay) == (False, False, False)
    assert rung1.defence.post_positions() == 0
    kl = build_config({**REQ, "method": "kl", "tokens": None}).defence  # the kl defence's own options
    assert (kl.lambda_kl, kl.temperature) == (3.0, 1.0) and not hasattr(kl, "kl_scope")
    assert build_config({**REQ, "calibration": False}).defence.post_positions() == 0


def test_yaml_config_and_flags_override(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("method: pact\nmodel: m\ndataset: d\noutput-dir: o\ntokens: t.json\nlearning_rate: 1.0e-4\n"
                         "max-steps: 9\nweights: off\npreset: reference-code\nlambda: 10\nwarmup_ratio_unused: null\n"
                         "save_strategy: steps\n")
    cfg = parse(["--config", str(yaml_file), "--max_steps", "3", "--lambda", "4"])
    assert cfg.training.learning_rate == 1e-4 and cfg.training.max_steps == 3
    assert cfg.defence.weights is False and cfg.defence.preset == "reference-code" and cfg.defence.temperature == 2.0
    assert cfg.defence.lambda_kl == 4.0
    assert cfg.training["save_strategy"] == "steps"  # other TrainingArguments fields pass through


@pytest.mark.parametrize("flat, message", [
    ({"preset": "reference-code", "safety_mass": True}, "temperature 1"),
    ({"kl_scope": "full", "weights": True}, "kl-scope full"),
    ({"tokens": None}, "needs --tokens"),
    ({"not_an_option": 1}, "unknown option"),
    ({"preset": "nope"}, "unknown --preset"),
    ({"weights": "maybe"}, "on or off"),
    ({"max_steps": "many"}, "expected int"),
    ({"poison_ratio": 1.5}, "poison-ratio"),
    ({"method": "dpo"}, "unknown --method"),
    ({"output_dir": None}, "output-dir"),
    ({"bf16": True, "fp16": True}, "exclusive"),
])
def test_bad_options(flat, message):
    with pytest.raises(SafekeelError, match=message):
        build_config({**REQ, **flat})


def test_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(SafekeelError, match="mapping"):
        parse(["--config", str(bad)])
    with pytest.raises(SafekeelError, match="cannot read"):
        parse(["--config", str(tmp_path / "missing.yaml")])


def test_train_help_lists_the_option_groups(capsys):
    from safekeel.cli.main import main

    try:  # main returns argparse's status (older versions let its SystemExit through)
        code = main(["train", "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0
    out = capsys.readouterr().out
    for flag in ("--method", "--tokens", "--preset", "--kl-scope", "--safety-mass", "--reference-cache", "--full",
                 "--load-in-4bit", "--learning-rate", "--per-device-train-batch-size", "--resume", "--config", "--overwrite"):
        assert flag in out


def test_records_written_before_the_registry_resume_without_differences():
    """A checkpoint's options from before the defence registry ("pact" section, TrainingOptions with
    "extra") compare equal to today's record of the same run."""
    from safekeel.training.checkpoints import differences

    new = build_config({**REQ, "lambda": 10, "max_steps": 5, "save_strategy": "steps"}).to_dict()
    old = {k: v for k, v in new.items() if k != "defence"}
    old["pact"] = dict(new["defence"])
    training = dict(new["training"])
    old["training"] = {**{k: v for k, v in training.items() if k != "save_strategy"},
                       "warmup_steps": 0, "logging_steps": 10, "save_steps": 500,
                       "extra": {"save_strategy": "steps"}}
    assert differences(old, new) == []
    old["pact"]["lambda_kl"] = 3.0
    assert differences(old, new) == ["lambda_kl 3.0 -> 10.0"]


def test_yaml_sections_and_a_recorded_run_as_config(tmp_path):
    import yaml

    nested = tmp_path / "nested.yaml"
    nested.write_text("model: m\ndataset: d\noutput_dir: o\ntokens: t.json\npact:\n  lambda: 7\n  preset: reference-code\n"
                      "lora:\n  lora_r: 4\ntraining:\n  learning_rate: 2.0e-4\n  save_strategy: steps\n")
    cfg = parse(["--config", str(nested)])
    assert cfg.defence.lambda_kl == 7.0 and cfg.defence.temperature == 2.0 and cfg.lora.lora_r == 4
    assert cfg.training.learning_rate == 2e-4 and cfg.training["save_strategy"] == "steps"
    recorded = tmp_path / "recorded.yaml"  # safekeel_run.json's "options", written back as YAML
    recorded.write_text(yaml.safe_dump(cfg.to_dict()))
    again = parse(["--config", str(recorded)])
    assert again.to_dict() == cfg.to_dict()
    clash = tmp_path / "clash.yaml"
    clash.write_text("model: m\ndataset: d\noutput_dir: o\ntokens: t.json\nlambda_kl: 1\npact:\n  lambda_kl: 2\n")
    with pytest.raises(SafekeelError, match="given twice"):
        parse(["--config", str(clash)])
