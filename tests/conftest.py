"""Shared fixtures: tiny random models and a tokenizer built in code (no downloads)."""

from __future__ import annotations

import json

import pytest

from safekeel.testing import build_model, build_tokenizer, save_tiny


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
