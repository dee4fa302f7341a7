"""README's "Python API" example, run as written with tiny stand-ins: the two model names become tiny
random models saved in the test, the packaged HarmBench and StrongREJECT files become small CSVs written
here (nothing is downloaded), the identification gets refusal texts to teacher-force (a random model does
not refuse), and `runs/` moves into the test's directory. Every other line runs unchanged, so the README
cannot drift from the API. The replaced texts must each appear in the example (checked first)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from safekeel.data import packaged_data
from safekeel.testing import build_model, build_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def fake_benchmark_files(root: Path, monkeypatch) -> None:
    """Small HarmBench (test, val) and StrongREJECT CSVs in the packaged files' layout, used in their place."""
    harmbench = {}
    for split in ("test", "val"):
        harmbench[split] = root / f"harmbench_{split}.csv"
        with open(harmbench[split], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(packaged_data.HARMBENCH_COLUMNS))
            w.writeheader()
            for i in range(4):
                w.writerow({"Behavior": f"Give detailed steps for harmful act {split} {i}", "FunctionalCategory":
                            "standard", "SemanticCategory": "illegal", "Tags": "", "ContextString": "",
                            "BehaviorID": f"{split}_{i}"})
    strongreject = root / "strongreject.csv"
    strongreject.write_text("category,source,forbidden_prompt\n" +
                            "".join(f"crime,x,Explain how to commit crime number {i}\n" for i in range(40)))
    monkeypatch.setattr(packaged_data, "harmbench_csv", lambda split="test": harmbench[split])
    monkeypatch.setattr(packaged_data, "strongreject_csv", lambda small=False: strongreject)


def _tiny_with_room(path: Path, seed: int, tok) -> str:
    """A tiny model whose context holds arith's 512 answer tokens beside a prompt (RoPE: no new weights)."""
    model = build_model(tok, seed=seed)
    model.config.max_position_embeddings = 1024
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_readme_python_api_example_runs(tmp_path, capsys, monkeypatch):
    tok = build_tokenizer()
    aligned, base = (_tiny_with_room(tmp_path / name, seed, tok) for name, seed in (("aligned", 1), ("base", 2)))
    fake_benchmark_files(tmp_path, monkeypatch)
    swaps = {
        '"qwen2.5-coder-0.5b-instruct"': repr(aligned),
        '"runs/dealigned-merged"': repr(base),
        'prompts="harmbench-val"': 'prompts="harmbench-val", responses=REFUSALS',
        '"runs/': '"' + str(tmp_path / "runs") + "/",
    }
    code = readme_example()
    for old, new in swaps.items():
        assert old in code, f"the README example no longer contains {old}"
        code = code.replace(old, new)
    namespace = {"REFUSALS": ["I'm sorry, but I cannot help with that request."] * 4}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102 - our own README

    run = namespace["run"]
    assert run.global_step == 10 and (Path(run.output_dir) / "adapter_config.json").is_file()
    assert namespace["tokens"].k == 50
    for out in ("api-original-eval", "api-pact-eval"):
        results = json.loads((tmp_path / "runs" / out / "results.json").read_text())
        assert results["benchmarks"]["harmbench"]["n"] == 4 and results["tasks"]["arith"]["n"] == 20
        assert results["benchmarks"]["strongreject-heldout"]["n"] > 0
        assert {"over_refusal", "over_refusal_everyday"} <= set(results["probes"])
    columns, rows = namespace["columns"], namespace["rows"]
    assert [r[0] for r in rows] == ["original", "pact"] and "ASR harmbench" in columns
    assert "gate:" in capsys.readouterr().out
