"""The CLI: help for every subcommand, identify/show on tiny saved models, one-line user errors."""

import json

import pytest

from safekeel.cli.main import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("models", "generate", "tokens"):
        assert name in out


@pytest.mark.parametrize("argv", [["models", "list"], ["models", "fetch"], ["generate"], ["tokens", "identify"],
                                  ["tokens", "show"], ["tokens", "intervene"]])
def test_every_subcommand_has_help(argv, capsys):
    assert argv[0] in _subcommands()
    assert main(argv + ["--help"]) == 0
    assert "usage: safekeel" in capsys.readouterr().out


def test_identify_and_show_cli(tiny_dirs, prompts_file, tmp_path, capsys):
    responses = tmp_path / "refusals.jsonl"
    responses.write_text("".join(json.dumps({"response": r}) + "\n" for r in [
        "I'm sorry, but I cannot help.", "I cannot provide that.", "I must decline.", "I cannot."]))
    out = tmp_path / "tokens.json"
    code = main(["tokens", "identify", "--aligned", tiny_dirs["aligned"], "--base", tiny_dirs["base"],
                 "--prompts", str(prompts_file), "--responses", str(responses), "--k", "7", "--max_new_tokens",
                 "16", "--output", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["k"] == 7 and data["n_kept"] == 4 and data["prompt_set"] == str(responses)
    assert data["aligned_model"]["kind"] == "local"
    answers = [json.loads(line) for line in out.with_suffix(".answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4 and all(a["kept"] for a in answers)
    capsys.readouterr()
    assert main(["tokens", "show", str(out), "--top", "3"]) == 0
    shown = capsys.readouterr().out
    assert "top 3 of 7" in shown
    for token_id in data["token_ids"][:3]:
        assert f" {token_id} " in shown


def test_generate_cli(tiny_dirs, prompts_file, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--model", tiny_dirs["aligned"], "--prompts", str(prompts_file), "--limit", "2",
                 "--max-new-tokens", "5", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p0", "p1"] and all(isinstance(r["response"], str) for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", "/no/such/dir", "--prompts", "harmbench"], "model path not found"),
    (["generate", "--model", "no-such-packaged-model", "--prompts", "x.jsonl"], "unknown model"),  # model first
    (["generate", "--model", "no-such-packaged-model", "--prompts", "harmbench"], "unknown model"),
    (["tokens", "show", "/no/such/tokens.json"], "safety-token file not found"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_empty_prompt_file_is_one_line(tiny_dirs, tmp_path, capsys):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert main(["generate", "--model", tiny_dirs["aligned"], "--prompts", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_bad_flag_value_exits_2(capsys):
    assert main(["tokens", "identify", "--aligned", "a", "--base", "b", "--k", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected a positive integer" in err and len(err.splitlines()) == 1
