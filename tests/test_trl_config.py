"""TRL recipes in `safekeel train`: YAML lists, several flag values, TRL's ModelConfig / SFTConfig names
(mapped, or refused with one line saying why), evaluation and upload refused before anything loads, the
help's notes on TRL's defaults, and the one YAML-mapping reader `--config` and grid files share."""

import json

import pytest
import yaml

from safekeel.cli.main import build_parser, main
from safekeel.cli.train_cmd import flat_options
from safekeel.errors import SafekeelError
from safekeel.io_utils import load_yaml_mapping
from safekeel.testing import tiny_setup
from safekeel.training.arguments import training_arguments
from safekeel.training.config import build_config, training_argument_fields
from safekeel.training.trl_compat import FIXED

REQ = ["--model", "m", "--dataset", "d", "--output-dir", "o", "--method", "sft"]


def parse(argv):
    """The RunConfig `safekeel train ARGV` builds (REQ first: later flags win)."""
    return build_config(flat_options(build_parser().parse_args(["train", *REQ, *argv])))


def parse_yaml(tmp_path, data: dict, *argv):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return parse(["--config", str(path), *argv])


# -- lists -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--lora_target_modules", "q_proj", "v_proj"],  # TRL's parser: nargs="+"
    ["--lora-target-modules", "q_proj,v_proj"],
    ["--training-arg", "lora_target_modules=[q_proj, v_proj]"],
])
def test_several_module_names_on_the_command_line(argv):
    assert parse(argv).lora.lora_target_modules == "q_proj,v_proj"


def test_all_linear_and_a_yaml_list_give_the_same_config_as_the_flag(tmp_path):
    assert parse(["--lora_target_modules", "all-linear"]).lora.lora_target_modules == "all-linear"
    from_yaml = parse_yaml(tmp_path, {"lora_target_modules": ["q_proj", "v_proj"]})
    assert from_yaml.to_dict() == parse(["--lora-target-modules", "q_proj,v_proj"]).to_dict()
    in_section = parse_yaml(tmp_path, {"lora": {"lora_target_modules": ["q_proj", "v_proj"]}})
    assert in_section.lora.lora_target_modules == "q_proj,v_proj"
    assert parse_yaml(tmp_path, {"lora_target_modules": ["all-linear"]}).lora.lora_target_modules == "all-linear"


def test_other_list_options_take_lists_too(tmp_path):
    cfg = parse_yaml(tmp_path, {"overlap_check": ["harmbench", "strongreject-heldout"], "report_to": ["none"]})
    assert cfg.overlap_check == "harmbench,strongreject-heldout" and cfg.training.report_to == ["none"]
    assert parse(["--overlap-check", "harmbench", "strongreject-heldout"]).overlap_check == cfg.overlap_check
    freeze = parse_yaml(tmp_path, {"freeze_layers": [0, 1, -1]}, "--method", "freeze")
    assert freeze.defence.freeze_layers == "0,1,-1"
    assert parse(["--method", "freeze", "--freeze-layers", "0", "-1"]).defence.freeze_layers == "0,-1"
    lr_kwargs = parse_yaml(tmp_path, {"lr_scheduler_kwargs": {"min_lr": 1.0e-6}})  # a mapping-valued field
    assert training_arguments(lr_kwargs).lr_scheduler_kwargs == {"min_lr": 1.0e-6}


@pytest.mark.parametrize("data, message", [
    ({"learning_rate": [1.0e-4, 2.0e-4]}, "--learning-rate takes one value, got a list"),
    ({"lora_r": [8]}, "--lora-r takes one value, got a list"),
    ({"dtype": ["bfloat16"]}, "--dtype takes one value, got a list"),
    ({"lr_scheduler_type": ["cosine"]}, "--lr-scheduler-type takes one value, got a list"),
    ({"lambda": [3]}, "--lambda-kl takes one value, got a list"),
    ({"full": {"on": 1}}, "--full takes one value, got a mapping"),
    ({"lora_target_modules": []}, "--lora-target-modules names no module"),
    ({"lora_target_modules": ["q_proj", ["v_proj"]]}, "--lora-target-modules takes a list of names"),
    ({"lora_target_modules": ["all-linear", "q_proj"]}, "all-linear stands alone"),
])
def test_a_list_where_one_value_is_expected_is_one_line(tmp_path, data, message):
    with pytest.raises(SafekeelError, match=message) as exc:
        parse_yaml(tmp_path, data)
    assert "\n" not in str(exc.value)


# -- TRL ModelConfig names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, full", [([], False), (["--use_peft"], False), (["--use-peft", "on"], False),
                                        (["--use_peft", "false"], True), (["--use-peft", "off", "--full"], True)])
def test_use_peft_is_lora_and_its_absence_full_fine_tuning(argv, full):
    assert parse(argv).lora.full is full


def test_use_peft_in_yaml_and_contradictions(tmp_path):
    assert parse_yaml(tmp_path, {"use_peft": False}).lora.full is True
    assert parse_yaml(tmp_path, {"use_peft": True, "lora_r": 16, "lora_alpha": 32}).lora.lora_r == 16
    for data in ({"use_peft": False, "full": False}, {"use_peft": True, "full": True}):
        with pytest.raises(SafekeelError, match="use_peft .* and full .* contradict each other"):
            parse_yaml(tmp_path, data)


@pytest.mark.parametrize("value", ["auto", "bfloat16", "float16", "float32"])
def test_torch_dtype_is_dtype(tmp_path, value):
    assert parse(["--torch_dtype", value]).dtype == value
    assert parse_yaml(tmp_path, {"torch_dtype": value}).dtype == value


def test_torch_dtype_bad_value_and_conflict(tmp_path):
    with pytest.raises(SafekeelError, match="--dtype must be auto, float32, bfloat16 or float16"):
        parse_yaml(tmp_path, {"torch_dtype": "float8"})
    with pytest.raises(SafekeelError, match="option dtype given twice with different values"):
        parse_yaml(tmp_path, {"torch_dtype": "bfloat16", "dtype": "float16"})
    assert parse_yaml(tmp_path, {"torch_dtype": "bfloat16"}, "--dtype", "float32").dtype == "float32"  # flags win


def test_model_config_settings_safekeel_fixes(tmp_path):
    ok = {"model_revision": "main", "lora_task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
          "load_in_8bit": False, "bnb_4bit_quant_type": "fp4", "use_bnb_nested_quant": False,
          "lora_modules_to_save": None, "trust_remote_code": True}  # bnb_*: nothing is quantised without 4-bit
    assert parse_yaml(tmp_path, ok).trust_remote_code is True
    for data, message in [
        ({"attn_implementation": "flash_attention_2"}, ("attn_implementation 'flash_attention_2': TRL ModelConfig "
                                                         "setting that safekeel handles differently")),
        ({"model_revision": "v1.1"}, "only 'main' is accepted"),
        ({"lora_task_type": "SEQ_CLS"}, "safekeel fine-tunes causal language models"),
        ({"use_dora": True}, "use_dora true: TRL ModelConfig"),
        ({"load_in_8bit": True}, "4-bit QLoRA"),
        ({"lora_modules_to_save": ["lm_head"]}, "safekeel trains the LoRA adapters only"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, "bnb_4bit_quant_type 'fp4'"),
    ]:
        with pytest.raises(SafekeelError, match=message):
            parse_yaml(tmp_path, data)


# -- TRL SFTConfig names and TrainingArguments of TRL recipes ------------------------------------------------

def test_max_seq_length_is_max_length(tmp_path):
    assert parse(["--max_seq_length", "512"]).training.max_length == 512
    assert parse(["--max-seq-length", "256"]).training.max_length == 256
    assert parse_yaml(tmp_path, {"max_seq_length": 128}).training.max_length == 128
    with pytest.raises(SafekeelError, match="option max_length given twice"):
        parse_yaml(tmp_path, {"max_seq_length": 128, "max_length": 256})


@pytest.mark.parametrize("data, message", [
    ({"packing": True}, ("packing true: TRL SFTConfig setting that safekeel handles differently: safekeel never "
                         "packs rows")),
    ({"dataset_text_field": "text"}, ("dataset_text_field 'text': TRL SFTConfig setting that safekeel handles "
                                      "differently: safekeel trains on chat rows")),
    ({"completion_only_loss": False}, "always on the last assistant answer's tokens only"),
    ({"truncation_mode": "keep_end"}, "only 'keep_start' is accepted"),
    ({"chat_template_path": "t.jinja"}, "the tokenizer's own chat template"),
])
def test_sft_config_fields_safekeel_handles_differently(tmp_path, data, message):
    with pytest.raises(SafekeelError, match=message) as exc:
        parse_yaml(tmp_path, data)
    assert "\n" not in str(exc.value)


def test_sft_config_values_safekeel_follows_anyway_are_accepted(tmp_path):
    cfg = parse_yaml(tmp_path, {"packing": False, "completion_only_loss": True, "assistant_only_loss": True,
                                "loss_type": "nll", "truncation_mode": "keep_start", "dataset_num_proc": None})
    assert "packing" not in cfg.training and "loss_type" not in cfg.training  # not TrainingArguments'
    with pytest.raises(SafekeelError, match="packing true: TRL SFTConfig"):
        parse(["--packing"])  # as a flag too (not argparse's "unrecognized arguments")


@pytest.mark.parametrize("argv", [["--eval_strategy", "steps"], ["--training-arg", "eval_strategy=steps"],
                                  ["--eval-strategy", "epoch"], ["--evaluation_strategy", "steps"],
                                  ["--training-arg", "do_eval=true"], ["--load_best_model_at_end"],
                                  ["--eval_on_start"]])
def test_evaluation_during_training_is_refused_with_the_reason(argv):
    with pytest.raises(SafekeelError, match="`safekeel train` has no evaluation set .*`safekeel eval`"):
        parse(argv)


def test_eval_fields_that_change_nothing_are_accepted(tmp_path):
    cfg = parse_yaml(tmp_path, "eval_strategy: no\neval_steps: 100\nper_device_eval_batch_size: 4\n"
                               "do_eval: false\nremove_unused_columns: false\n")  # YAML reads `no` as false
    args = training_arguments(cfg)
    assert str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no" and not args.remove_unused_columns
    with pytest.raises(SafekeelError, match="remove_unused_columns: set by safekeel itself"):
        parse_yaml(tmp_path, {"remove_unused_columns": True})


def test_push_to_hub_is_refused():
    with pytest.raises(SafekeelError, match="push_to_hub true: `safekeel train` does not upload"):
        parse(["--push_to_hub"])
    assert not parse(["--push_to_hub", "false"]).training.push_to_hub


def test_common_trl_training_arguments(tmp_path):
    recipe = {"model_name_or_path": "m", "torch_dtype": "bfloat16", "use_peft": True, "lora_r": 16,
              "lora_alpha": 32, "lora_dropout": 0.1, "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "learning_rate": 2.0e-4, "num_train_epochs": 1, "per_device_train_batch_size": 8,
              "gradient_accumulation_steps": 2, "gradient_checkpointing": True,
              "gradient_checkpointing_kwargs": {"use_reentrant": False}, "lr_scheduler_type": "cosine",
              "warmup_ratio": 0.1, "logging_steps": 5, "save_strategy": "epoch", "max_seq_length": 512,
              "packing": False, "report_to": "none", "seed": 7, "eval_strategy": "no", "hub_model_id": "me/x"}
    cfg = parse_yaml(tmp_path, recipe)
    lo, t = cfg.lora, cfg.training
    assert (cfg.model, cfg.dtype, lo.full, lo.lora_r, lo.lora_alpha, lo.lora_dropout) == ("m", "bfloat16", False,
                                                                                          16, 32, 0.1)
    assert lo.lora_target_modules == "q_proj,k_proj,v_proj,o_proj" and t.max_length == 512
    args = training_arguments(cfg)
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (2e-4, 1.0, 8)
    assert str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)) == "cosine"
    assert str(getattr(args.save_strategy, "value", args.save_strategy)) == "epoch"
    if "warmup_ratio" in training_argument_fields():  # transformers 4: its own field
        assert args.warmup_ratio == 0.1
    else:  # transformers 5: warmup_steps below 1 is the ratio
        assert args.warmup_steps == 0.1
    with pytest.raises(SafekeelError, match="--warmup-ratio must be in"):
        parse(["--warmup_ratio", "1.5"])


def test_fixed_names_are_not_options_of_safekeel_or_transformers():
    """A FIXED name that became a TrainingArguments field (or a safekeel option) would be refused wrongly."""
    from safekeel.training.config import RUN_FIELDS, LoraOptions, MonitorOptions, defence_option_owners

    ours = {f.name for f in RUN_FIELDS} | set(LoraOptions.__dataclass_fields__) | set(
        MonitorOptions.__dataclass_fields__) | set(defence_option_owners())
    assert not set(FIXED) & (set(training_argument_fields()) | ours)


def test_the_docs_list_every_trl_setting_safekeel_fixes():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "## TRL-compatible configuration" in docs
    assert [name for name in FIXED if f"`{name}`" not in docs] == []


# -- help --------------------------------------------------------------------------------------------------

def test_help_names_trl_defaults_where_they_differ(capsys):
    try:
        code = main(["train", "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps: compare with single spaces
    for text in ("default: 3e-05, the PACT paper's; TRL: 2e-05", "default: 2, the PACT paper's; TRL: 8",
                 "default: 3.0, the PACT paper's; TRL: 3, the same",
                 "default: 1024, pinned for the run record; TRL: 1024, the same",
                 "default: 8, the PACT paper's; TRL: 16", "--use-peft", "--torch_dtype", "--max_seq_length",
                 "TRL names"):
        assert text in out, text


# -- one YAML reader ---------------------------------------------------------------------------------------

def test_load_yaml_mapping(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("")
    assert load_yaml_mapping(path, "--config") == {}
    path.write_text("a: [1, 2]\n")
    assert load_yaml_mapping(path, "--config") == {"a": [1, 2]}
    for text, message in [("a: [1\n", r"--config .*x.yaml is not valid YAML \(line 2\)"),
                          ("- a\n", "--config .*x.yaml must be a mapping of names, got a list")]:
        path.write_text(text)
        with pytest.raises(SafekeelError, match=message):
            load_yaml_mapping(path, "--config", hint="of names")
    with pytest.raises(SafekeelError, match="cannot read grid file .*nope.yaml: file not found"):
        load_yaml_mapping(tmp_path / "nope.yaml", "grid file")


def test_config_and_grid_files_share_the_messages(tmp_path):
    from safekeel.experiment.grid import load_grid

    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n")
    with pytest.raises(SafekeelError, match="--config .* must be a mapping of option names to values"):
        parse(["--config", str(bad)])
    with pytest.raises(SafekeelError, match=r"grid file .* must be a mapping \(model:, methods:"):
        load_grid(bad)
    with pytest.raises(SafekeelError, match="cannot read --config .*: file not found"):
        parse(["--config", str(tmp_path / "missing.yaml")])


# -- end to end ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("trl"))


def test_a_trl_recipe_trains_lora_on_exactly_the_listed_modules(setup, tmp_path, capsys):
    """A YAML recipe in TRL's names trains; the adapter covers q_proj and v_proj and nothing else."""
    out = tmp_path / "run"
    recipe = {"model_name_or_path": setup["model"], "dataset_name": setup["data"], "output_dir": str(out),
              "method": "sft", "use_peft": True, "torch_dtype": "float32", "lora_r": 4, "lora_alpha": 8,
              "lora_dropout": 0.0, "lora_target_modules": ["q_proj", "v_proj"], "max_seq_length": 64,
              "max_steps": 2, "logging_steps": 1, "learning_rate": 1.0e-3, "packing": False,
              "eval_strategy": "no", "overlap_check": "none", "disable_tqdm": True, "report_to": "none"}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "recipe.yaml")]) == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter_model.safetensors"))
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in weights}
    assert adapted == {"q_proj", "v_proj"}
    record = json.loads((out / "safekeel_run.json").read_text())
    options = record["options"]
    assert options["lora"]["lora_target_modules"] == "q_proj,v_proj"
    assert options["training"]["max_length"] == 64 and options["dtype"] == "float32"
    assert build_config(_flat(options)).lora.lora_target_modules == "q_proj,v_proj"  # the record is a config


def _flat(options: dict) -> dict:
    from safekeel.cli.train_cmd import yaml_sections

    return yaml_sections(options)
