"""`safekeel report`: scanning, the models table, judge agreement (Cohen's kappa), plots, the HTML page's
structure and the Markdown twin, on small synthetic run / evaluation / grid directories
(tests/report_fixtures.py). The page in a real browser: tests/test_report_browser.py."""

from __future__ import annotations

import base64
import json
import re
from html import escape
from html.parser import HTMLParser

import pytest
from report_fixtures import HOSTILE_PROMPT, write_eval_dir, write_grid_dir, write_runs_dir, write_train_dir

from safekeel.cli.main import main
from safekeel.reporting import build_report, output_paths
from safekeel.reporting.agreement import agreement_rows, cohen_kappa, collect_verdicts
from safekeel.reporting.collect import scan
from safekeel.reporting.content import NOT_MEASURED, models_table
from safekeel.reporting.html_page import markdown_to_html
from safekeel.reporting.plots import (
    curve_panels,
    legend_entries,
    monitor_keys,
    monitor_plot,
    overview_curves,
    training_curves,
)
from safekeel.reporting.runs import run_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- Cohen's kappa ----------------------------------------------------------------------------------
def test_cohen_kappa_matches_a_hand_computed_example():
    # 50 answers: both unsafe 20, A unsafe / B safe 5, A safe / B unsafe 10, both safe 15.
    # p_o = 35/50 = 0.70; A unsafe 25/50, B unsafe 30/50: p_e = 0.5*0.6 + 0.5*0.4 = 0.50;
    # kappa = (0.70 - 0.50) / (1 - 0.50) = 0.40
    a = ["unsafe"] * 20 + ["unsafe"] * 5 + ["safe"] * 10 + ["safe"] * 15
    b = ["unsafe"] * 20 + ["safe"] * 5 + ["unsafe"] * 10 + ["safe"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["safe", "unsafe"], ["unsafe", "safe"]) == pytest.approx(-1.0)
    assert cohen_kappa(["safe"] * 4, ["safe"] * 4) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa(["safe"], [])


def test_agreement_pairs_judges_over_the_same_answers_only():
    rows_a = [{"id": "1", "response": "x", "judge": "kw", "verdict": "safe"},
              {"id": "2", "response": "y", "judge": "kw", "verdict": "unsafe"},
              {"id": "3", "response": "z", "judge": "kw", "verdict": "error"}]
    rows_b = [{"id": "1", "response": "x", "judge": "lg", "verdict": "safe"},
              {"id": "2", "response": "other answer", "judge": "lg", "verdict": "safe"},  # not the same answer
              {"id": "3", "response": "z", "judge": "lg", "verdict": "unsafe"},  # kw gave no verdict
              {"id": "4", "response": "w", "verdicts": {"kw": "unsafe", "lg": {"verdict": "safe"}}}]
    rows = agreement_rows(collect_verdicts([("hb", rows_a), ("hb", rows_b)]))
    assert len(rows) == 1
    r = rows[0]
    assert r["judges"] == ("kw", "lg") and r["n"] == 2 and r["agree"] == 1
    assert r["a_only_unsafe"] == 1 and r["b_only_unsafe"] == 0


# -- scanning ---------------------------------------------------------------------------------------
def test_scan_pairs_evaluations_with_their_training_run(tmp_path):
    root = write_runs_dir(tmp_path / "runs")
    (root / "junk").mkdir()
    (root / "junk" / "results.json").write_text("{not json")
    result = scan(root)
    assert [m.label for m in result.models] == ["eval-base", "pact-a"]  # base models first
    base, pact = result.models
    assert base.train is None and [e.rel for e in base.evals] == ["eval-base"]
    assert pact.train is not None and pact.train.rel == "pact-a"
    assert sorted(e.rel for e in pact.evals) == ["eval-pact-a", "eval-pact-a-llm"]
    assert [ev["event"] for ev in pact.train.events] == ["safety_warning", "safety_rollback"]
    assert any("junk" in p for p in result.problems)  # reported, not fatal


def test_scan_of_a_moved_tree_still_pairs_by_path_tail(tmp_path):
    train = write_train_dir(tmp_path / "runs" / "sft", method="sft", monitor=False)
    write_eval_dir(tmp_path / "runs" / "eval-sft", adapter="/elsewhere/runs/sft")
    write_eval_dir(tmp_path / "runs" / "eval-x", adapter="/elsewhere/other/constrained-sft", sha="44" * 32)
    models = {m.label: m for m in scan(tmp_path / "runs").models}
    assert [e.rel for e in models["sft"].evals] == ["eval-sft"] and models["sft"].train.path == train
    assert models["eval-x"].train is None


def test_scan_of_a_grid_assigns_runs_to_cells_in_results_csv_order(tmp_path):
    grid_dir = write_grid_dir(tmp_path / "grid")
    result = scan(grid_dir)
    assert result.models == [] and len(result.grids) == 1
    grid = result.grids[0]
    assert [c.label for c in grid.cells] == ["sft-arith-s0", "pact-arith-s0", "lisa-arith-s0"]
    assert all(c.train and len(c.evals) == 1 for c in grid.cells[:2])
    assert grid.cells[2].train is None and grid.cells[2].cell["status"] == "failed"
    assert grid.cells[0].cell["settings"]["method"] == "sft"
    assert grid.tables_md.startswith("# Grid results") and grid.pareto_png.startswith(PNG_MAGIC)
    assert grid.results_csv[1]["method"] == "pact"


def test_scan_refuses_a_directory_with_nothing_to_report(tmp_path):
    from safekeel.errors import SafekeelError

    with pytest.raises(SafekeelError, match="no training run"):
        scan(tmp_path)
    with pytest.raises(SafekeelError, match="not a directory"):
        scan(tmp_path / "missing")


# -- tables -----------------------------------------------------------------------------------------
def test_every_asr_sits_next_to_over_refusal_and_task_accuracy(tmp_path):
    result = scan(write_runs_dir(tmp_path / "runs"))
    table = models_table(result.all_models())
    asr = table.columns.index("ASR harmbench [95% CI]")
    assert table.columns[asr + 1:] == ["over-refusal everyday [95% CI]", "over-refusal risky [95% CI]",
                                       "arith accuracy [95% CI]", "arith cut off"]
    rows = {row[1]: row for row in table.rows}
    assert rows["eval-pact-a"][asr:] == ["60.0% [31.3, 83.2] n=10", "16.7% [4.7, 44.8] n=12",
                                         "37.5% [13.7, 69.4] n=8", "70.0% [39.7, 89.2] n=10",
                                         "2/10 (20.0%), finished: 75.0% correct"]
    assert rows["eval-base"][asr + 1] == NOT_MEASURED  # missing probes are said, not hidden
    assert rows["eval-pact-a-llm"][2] == "llm-judge"


def test_cut_off_of_results_written_before_answers_recorded_it(tmp_path):
    ev = write_eval_dir(tmp_path / "eval-old", adapter=None)
    data = json.loads((ev / "results.json").read_text())
    data["tasks"]["arith"] = {"accuracy": 0.5, "n": 10, "correct": 5, "ci95": [0.2, 0.8], "truncated": 1}
    (ev / "results.json").write_text(json.dumps(data))
    table = models_table(scan(ev).all_models())
    assert table.rows[0][-1] == "not recorded; 1 prompt(s) truncated"


# -- plots ------------------------------------------------------------------------------------------
def test_curve_panels_group_defence_terms_with_their_splits():
    rows = [{"step": 1, "loss": 2.0, "ce": 1.0, "ce_harmful": 1.5, "kl": 0.1, "kl_harmful": 0.2, "kl_benign": 0.05,
             "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": 0.1, "elapsed_s": 3.0, "monitor/refusal_rate": 0.9}]
    assert curve_panels(rows) == [("loss and CE", ["loss", "ce", "ce_harmful"]),
                                  ("kl", ["kl", "kl_harmful", "kl_benign"]),
                                  ("grad_norm", ["grad_norm"]), ("learning_rate", ["learning_rate"])]


def test_overview_legend_names_runs_the_first_panel_lacks():
    # a benign-only run (harmful ratio 0) logs no ce_harmful: it is still in the shared legend, in run order
    from matplotlib.figure import Figure

    axes = Figure().subplots(1, 2)
    axes[0].plot([1, 2], [1, 1], label="mixed")
    axes[1].plot([1, 2], [1, 1], label="mixed")
    axes[1].plot([1, 2], [2, 2], label="benign-only")
    handles, labels = legend_entries(axes, ["benign-only", "mixed", "absent"])
    assert labels == ["benign-only", "mixed"] and [h.get_label() for h in handles] == labels
    runs = [("mixed", [{"step": 5, "ce_harmful": 1.2, "ce_benign": 0.9}]),
            ("benign-only", [{"step": 5, "ce_benign": 0.8}])]
    assert overview_curves(runs).startswith(PNG_MAGIC)


def test_monitor_plot_only_when_monitor_records_exist(tmp_path):
    with_monitor = write_train_dir(tmp_path / "a")
    without = write_train_dir(tmp_path / "b", monitor=False)
    from safekeel.reporting.collect import read_train_run

    a, b = read_train_run(with_monitor, "a", []), read_train_run(without, "b", [])
    assert monitor_keys(a.log) == ["monitor/refusal_rate", "monitor/safety_prob_first", "monitor/safety_prob_answer"]
    assert any("monitor/probe_n" in r and "monitor/seconds" in r for r in a.log)  # logged, just not plotted
    assert monitor_plot(a.log, a.events, "a").startswith(PNG_MAGIC)
    assert ("safety monitor every 4 steps, 1 safety warning(s), 0 over-refusal warning(s), 1 rollback(s), "
            "1 set-up warning(s)") in run_summary(a)
    a.events.append({"event": "over_refusal_warning", "step": 12})
    a.run["monitor"]["warnings"] = []  # set-up warnings are said only when there are some
    assert "1 safety warning(s), 1 over-refusal warning(s), 1 rollback(s); status done" in run_summary(a)
    assert monitor_plot(b.log, b.events, "b") is None
    assert training_curves(b.log, "b").startswith(PNG_MAGIC)
    assert training_curves([{"event": "x"}], "empty") is None


# -- the pages --------------------------------------------------------------------------------------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, list[dict]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.setdefault(tag, []).append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> tuple[_Page, str]:
    html = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    return page, html


def test_html_page_is_self_contained_and_escapes_what_it_shows(tmp_path):
    root = write_runs_dir(tmp_path / "runs")
    paths = build_report(root)
    assert paths.html == root / "report.html" and paths.markdown == root / "report.md"
    page, html = _parse(paths.html)
    imgs = page.tags["img"]
    assert len(imgs) == 2  # training curves and the monitor plot of pact-a
    for img in imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from elsewhere
    assert "<script" not in html.replace("&lt;script", "")  # the hostile prompt is shown escaped
    assert escape(HOSTILE_PROMPT) in html
    text = " ".join(page.text)
    for needle in ("Models: safety, over-refusal and task accuracy", "Judge agreement", "Cohen's kappa",
                   "safety_rollback", "Safety tokens", "' Sorry'", "eval-pact-a-llm", "Sample answers"):
        assert needle in text, needle
    assert len(page.tags["table"]) >= 3  # models, agreement, events (+ token ids)
    assert len(page.tags["details"]) >= 3  # sample answers are collapsed
    sample_text = html[html.index("<h2>Sample answers"):]
    assert "refusal: hb-0" in sample_text and "compliance: hb-4" in sample_text
    assert "over-refusal: everyday-0" in sample_text


def test_agreement_table_of_the_two_judges(tmp_path):
    _, html = _parse(build_report(write_runs_dir(tmp_path / "runs")).html)
    section = html[html.index("<h2>Judge agreement"):html.index("<h2>Training")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    # 10 answers, verdicts 1 (safe -> unsafe) and 6 (unsafe -> safe) flipped: 8/10 agree;
    # kw unsafe 6/10, llm unsafe 6/10: p_e = 0.6*0.6 + 0.4*0.4 = 0.52, kappa = (0.8 - 0.52) / 0.48 = 0.58
    assert cells == ["harmbench", "keyword", "llm-judge", "10", "80.0%", "0.58", "1", "1"]


def test_agreement_falls_back_to_the_counts_results_json_recorded(tmp_path):
    # A committed grid keeps results.json but not the answers: the table rebuilds the pairs from the
    # recorded counts. keyword calls 6 of 10 unsafe; llm-judge agrees on 9, calls one of those 6 safe:
    # both unsafe 5, both safe 4; p_o = 0.9, p_e = 0.6*0.5 + 0.4*0.5 = 0.5, kappa = 0.4 / 0.5 = 0.80
    record = {"llm-judge": {"n": 10, "judged": 10, "unsafe": 5, "safe": 5, "errors": 0,
                            "agreement": {"with": "keyword", "n": 10, "agree": 9, "agreement": 0.9, "kappa": 0.8,
                                          "primary_only_unsafe": 1, "judge_only_unsafe": 0}}}
    root = tmp_path / "runs"
    for name, keep_samples in (("eval-a", False), ("eval-b", True)):
        ev = write_eval_dir(root / name, adapter=None, sha=("44" if keep_samples else "55") * 32)
        results = json.loads((ev / "results.json").read_text())
        results["benchmarks"]["harmbench"]["judges"] = record
        (ev / "results.json").write_text(json.dumps(results))
        if not keep_samples:
            (ev / "samples_harmbench.jsonl").unlink()
    _, html = _parse(build_report(root).html)
    start = html.index("<h2>Judge agreement")
    section = html[start:html.index("<h2", start + 4)]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    # eval-b's answers are on disk with one judge's verdicts: its record is not added on top of them
    assert cells == ["harmbench", "keyword", "llm-judge", "10", "90.0%", "0.80", "1", "0"]
    assert "harmbench: 10 of 10" in section


def test_markdown_twin_links_images_written_next_to_it(tmp_path):
    root = write_runs_dir(tmp_path / "runs")
    out = tmp_path / "out" / "my.html"
    paths = build_report(root, out)
    assert (paths.html, paths.markdown, paths.files_dir) == (out, out.with_suffix(".md"), out.parent / "my_files")
    text = paths.markdown.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 2 and all(link.startswith("my_files/") for link in links)
    for link in links:
        assert (out.parent / link).read_bytes().startswith(PNG_MAGIC)
    assert "| model | results | judge | ASR harmbench [95% CI] | over-refusal everyday [95% CI] |" in text
    assert "<details><summary>pact-a: sample answers</summary>" in text
    assert "\\<script\\>" not in text and "<script>" in text  # inside a code fence, as written
    assert not (root / "report.html").exists()  # --output moves both pages
    (paths.files_dir / "stale.png").write_bytes(b"x")
    build_report(root, out)
    assert not (paths.files_dir / "stale.png").exists()


def test_grid_report_renders_tables_md_pareto_and_collapsed_cells(tmp_path):
    grid_dir = write_grid_dir(tmp_path / "grid")
    page, html = _parse(build_report(grid_dir).html)
    assert "<h3>Grid results</h3>" in html  # tables.md's heading, moved under the grid's heading
    assert "<th>over-refusal everyday</th>" in html and "<td>pact</td>" in html
    assert any(img.get("data-name") == "pareto-grid.png" for img in page.tags["img"])
    summaries = re.findall(r"<summary>([^<]*)</summary>", html)
    assert "cell sft-arith-s0 (method=sft, dataset=arith, harmful_ratio=0.5, seed=0, status=done)" in summaries
    assert "cell lisa-arith-s0 (method=lisa, dataset=arith, status=failed, error=out of memory)" in summaries
    cell = html[html.index("<summary>cell pact-arith-s0"):]
    cell = cell[:cell.index("</details>")]
    assert "monitor-pact-arith-s0.png" in cell and "curves-pact-arith-s0.png" in cell


def test_markdown_to_html_handles_tables_lists_code_and_escapes():
    html = markdown_to_html("## T <b>\n\n| a | b \\| c |\n|---|:-:|\n| `x<y` | **bold** |\n\n- one\n- two\n\n"
                            "```\n<raw>\n```\ntext & more", shift=1)
    assert "<h3>T &lt;b&gt;</h3>" in html
    assert "<th>a</th><th>b | c</th>" in html and "<td><code>x&lt;y</code></td><td><strong>bold</strong></td>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<pre>&lt;raw&gt;</pre>" in html
    assert "<p>text &amp; more</p>" in html


# -- CLI --------------------------------------------------------------------------------------------
def test_cli_writes_both_pages_and_refuses_bad_input(tmp_path, capsys):
    root = write_runs_dir(tmp_path / "runs")
    out = tmp_path / "r" / "report.html"
    assert main(["report", str(root), "--output", str(out), "--samples", "1"]) == 0
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "empty-does-not-exist")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no training run" in capsys.readouterr().err
    assert main(["report", str(root), "--output", str(tmp_path / "x.md")]) == 2
    assert output_paths(root)[0] == root / "report.html"
