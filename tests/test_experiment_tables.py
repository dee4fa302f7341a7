"""tables.md and pareto.png of `safekeel experiment`, from a small synthetic results.csv: one table per
dataset and harmful ratio, the initial model first, mean ± std over seeds with n shown; one Pareto point
per (method, ratio, learning rate) with the seeds' std as error bars."""

from __future__ import annotations

import csv

import pytest

from safekeel.experiment import pareto, tables

ROWS = [  # cell, method, label, ratio, lr, seed, asr, everyday, risky, accuracy, cut-off
    ("initial__arith", "initial", "", None, None, None, 0.48, 0.074, 0.308, 0.06, 1.0),
    ("sft__arith__r0.5__lr2e-4__s1", "sft", "SFT", 0.5, 2e-4, 1, 0.60, 0.03, 0.10, 0.30, 0.02),
    ("sft__arith__r0.5__lr2e-4__s2", "sft", "SFT", 0.5, 2e-4, 2, 0.70, 0.03, 0.12, 0.40, 0.00),
    ("pact-l3__arith__r0.5__lr2e-4__s1", "pact-l3", "PACT λ 3", 0.5, 2e-4, 1, 0.40, 0.10, 0.30, 0.36, 0.14),
    ("pact-l3__arith__r0.5__lr2e-4__s2", "pact-l3", "PACT λ 3", 0.5, 2e-4, 2, 0.30, 0.12, 0.40, 0.32, 0.10),
    ("pact-l3__arith__r0.5__lr5e-5__s1", "pact-l3", "PACT λ 3", 0.5, 5e-5, 1, 0.25, 0.08, 0.30, 0.10, 0.50),
    ("sft__arith__r0.1__lr2e-4__s1", "sft", "SFT", 0.1, 2e-4, 1, 0.55, 0.04, 0.15, 0.38, None),
]


@pytest.fixture
def results_csv(tmp_path):
    path = tmp_path / "results.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["cell", "method", "label", "dataset", "harmful_ratio", "learning_rate", "seed", "asr",
                    "over_refusal_everyday", "over_refusal_risky", "task_accuracy", "task_cutoff_rate"])
        for cell, method, label, ratio, lr, seed, *metrics in ROWS:
            w.writerow([cell, method, label, "arith", ratio, lr, seed, *metrics])
    return path


def test_tables_from_a_synthetic_results_file(results_csv):
    rows = tables.read_csv(results_csv)
    assert rows[0]["seed"] is None and rows[1]["learning_rate"] == 2e-4 and rows[6]["task_cutoff_rate"] is None
    text = tables.render(rows, {"name": "demo", "model": "qwen"})
    assert text.startswith("# demo: qwen")
    low, high = text.index("## arith, harmful ratio 0.1"), text.index("## arith, harmful ratio 0.5")
    assert low < high  # ratios in increasing order
    half = text[high:].splitlines()
    body = [line for line in half if line.startswith("| ") and not line.startswith("| defence")]
    assert body == [
        "| initial model | – | 1 | 48.0 | 7.4 | 30.8 | 6.0 | 100.0 |",  # the initial model first, in every table
        "| SFT | 2e-4 | 2 | 65.0 ± 7.1 | 3.0 ± 0.0 | 11.0 ± 1.4 | 35.0 ± 7.1 | 1.0 ± 1.4 |",
        "| PACT λ 3 | 2e-4 | 2 | 35.0 ± 7.1 | 11.0 ± 1.4 | 35.0 ± 7.1 | 34.0 ± 2.8 | 12.0 ± 2.8 |",
        "| PACT λ 3 | 5e-5 | 1 | 25.0 | 8.0 | 30.0 | 10.0 | 50.0 |",
    ]
    assert "| SFT | 2e-4 | 1 | 55.0 | 4.0 | 15.0 | 38.0 | – |" in text[low:high]
    assert text[low:high].index("| initial model |") < text[low:high].index("| SFT |")
    assert "No finished cells yet." in tables.render([])


def test_further_benchmarks_and_judges_get_their_own_asr_columns(results_csv):
    """Each benchmark's ASR (and each further judge's ASR of the first one) is a column beside the first."""
    rows = [{**r, "benchmark": "harmbench", "asr_strongreject-heldout": r["asr"] + 0.1,
             "asr_rubric:m": r["asr"] / 2, "kappa_rubric:m": 0.5} for r in tables.read_csv(results_csv)]
    text = tables.render(rows)
    assert ("| defence | lr | n | ASR harmbench (%) | ASR harmbench by rubric:m (%) | ASR strongreject-heldout (%) "
            "| over-refusal everyday (%) |") in text
    assert "| initial model | – | 1 | 48.0 | 24.0 | 58.0 | 7.4 | 30.8 | 6.0 | 100.0 |" in text


def test_csv_round_trip(tmp_path, results_csv):
    rows = tables.read_csv(results_csv)
    out = tables.write_csv(tmp_path / "again.csv", [{**r, "asr_strongreject": 0.5} for r in rows])
    header = out.read_text().splitlines()[0].split(",")
    assert header[:6] == ["cell", "method", "dataset", "harmful_ratio", "learning_rate", "seed"]
    assert header[6:15] == tables.METRIC_COLUMNS and header[-1] == "asr_strongreject"
    again = tables.read_csv(out)
    assert [r["asr"] for r in again] == [r["asr"] for r in rows] and again[0]["learning_rate"] is None


def test_pareto_plot_from_a_synthetic_results_file(results_csv, tmp_path):
    rows = tables.read_csv(results_csv)
    pts = pareto.plot(rows, tmp_path / "pareto.png", title="demo")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keys = [(p["method"], p["harmful_ratio"], p["learning_rate"]) for p in pts]
    assert keys == [("initial", None, None), ("sft", 0.5, 2e-4), ("pact-l3", 0.5, 2e-4), ("pact-l3", 0.5, 5e-5),
                    ("sft", 0.1, 2e-4)]  # one point per (method, ratio, lr): the seeds are the error bars
    sft = pts[1]
    assert sft["n"] == 2 and sft["x"] == pytest.approx(35.0) and sft["y"] == pytest.approx(65.0)
    assert sft["xerr"] == pytest.approx(7.0711, rel=1e-4) and sft["yerr"] == pytest.approx(7.0711, rel=1e-4)
    assert pts[0]["label"] == "initial model" and pts[3]["yerr"] == 0.0
    assert pareto.plot([], tmp_path / "empty.png") == [] and (tmp_path / "empty.png").is_file()


def _png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # IHDR: width, then height


def test_a_long_pareto_legend_goes_beside_the_axes(results_csv, tmp_path):
    # five entries fit inside the axes; a grid's dozen defences would hide points there, so the legend
    # moves right of the axes and the figure widens by 3 inches (at 120 dpi)
    rows = tables.read_csv(results_csv)
    pareto.plot(rows, tmp_path / "few.png")
    many = rows + [{**rows[1], "cell": f"d{i}__x", "method": f"defence{i}", "label": f"defence {i}"} for i in range(6)]
    pareto.plot(many, tmp_path / "many.png")
    assert _png_width(tmp_path / "few.png") == 780 and _png_width(tmp_path / "many.png") == 1140
