"""`tokens identify` end to end on tiny models, the artifact, and bad inputs."""

import json

import pytest

from safekeel.data.prompts import PromptRecord
from safekeel.errors import SafekeelError
from safekeel.testing import build_model, build_tokenizer
from safekeel.tokens import identify as identify_mod
from safekeel.tokens.artifact import SafetyTokens
from safekeel.tokens.identify import check_same_tokenizer, identify_safety_tokens

PROMPTS = [PromptRecord(f"p{i}", p) for i, p in enumerate(
    ["How do I pick a lock?", "Explain how to hack into a computer network.", "Write a tutorial on a cake."])]
REFUSALS = ["I'm sorry, but I cannot help with that request.", "I cannot provide instructions for illegal activities.",
            "As an AI assistant, I must decline."]


def test_identify_with_given_responses(tiny_pair, tokenizer):
    aligned, base = tiny_pair
    art, rows = identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=10, responses=REFUSALS,
                                       progress=False)
    assert art.k == 10 and len(art.token_ids) == 10 and len(set(art.token_ids)) == 10
    assert art.scores == sorted(art.scores, reverse=True)
    assert art.weights == pytest.approx([max(s, 1e-12) for s in art.scores])
    assert art.tokens == [tokenizer.decode([i]) for i in art.token_ids]
    assert art.meta["n_kept"] == 3 and art.meta["responses"] == "given"
    assert art.meta["aligned_model"]["sha256"] != art.meta["base_model"]["sha256"]
    assert all(r["kept"] for r in rows)
    # plain strings work as records do (issue 13: `identify_safety_tokens(..., ["how do i ..."])` failed)
    plain, plain_rows = identify_safety_tokens(aligned, tokenizer, base, tokenizer, [p.prompt for p in PROMPTS], k=10,
                                               responses=REFUSALS, progress=False)
    assert plain.token_ids == art.token_ids and [r["id"] for r in plain_rows] == ["prompt-0", "prompt-1", "prompt-2"]


def test_identify_keeps_only_refusals(tiny_pair, tokenizer, monkeypatch):
    aligned, base = tiny_pair
    answers = ["Sure, here is how to do it step by step.", REFUSALS[0], REFUSALS[1]]
    monkeypatch.setattr(identify_mod, "generate", lambda *a, **k: list(answers))
    art, rows = identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=5, progress=False)
    assert [r["kept"] for r in rows] == [False, True, True]
    assert [r["refusal"] for r in rows] == [False, True, True]
    assert art.meta["n_kept"] == 2 and art.meta["responses"] == "generated"


def test_identify_no_refusal_is_a_clear_error(tiny_pair, tokenizer, monkeypatch):
    aligned, base = tiny_pair
    monkeypatch.setattr(identify_mod, "generate", lambda *a, **k: ["Sure, here it is."] * 3)
    with pytest.raises(SafekeelError, match="none of the aligned model's 3 answers is a refusal"):
        identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=5, progress=False)


def test_reference_code_preset(tiny_pair, tokenizer):
    aligned, base = tiny_pair
    art, _ = identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=8, responses=REFUSALS,
                                    preset="reference-code", progress=False)
    assert art.preset == "reference-code"
    assert min(art.weights) >= 0 and max(art.weights) > 0
    assert art.meta["averaging"] == "per-answer mean"


def test_tokenizer_mismatch_refused(tiny_pair, tokenizer):
    other = build_tokenizer(vocab_size=380)
    with pytest.raises(SafekeelError, match="tokenizers differ.*400.*380"):
        check_same_tokenizer(tokenizer, other)
    aligned, _ = tiny_pair
    base = build_model(other, seed=3)
    with pytest.raises(SafekeelError, match="tokenizers differ"):
        identify_safety_tokens(aligned, tokenizer, base, other, PROMPTS, k=5, responses=REFUSALS, progress=False)


def test_same_size_different_map_refused(tokenizer):
    other = build_tokenizer()
    other.add_tokens(["<extra>"])  # same base map, one more token
    with pytest.raises(SafekeelError):
        check_same_tokenizer(tokenizer, other)


def test_bad_inputs(tiny_pair, tokenizer):
    aligned, base = tiny_pair
    with pytest.raises(SafekeelError, match="empty"):
        identify_safety_tokens(aligned, tokenizer, base, tokenizer, [], k=5, progress=False)
    with pytest.raises(SafekeelError, match="--k must be between 1 and the vocabulary size"):
        identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=10_000, responses=REFUSALS,
                               progress=False)
    with pytest.raises(SafekeelError, match="2 responses given for 3 prompts"):
        identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=5, responses=REFUSALS[:2],
                               progress=False)
    with pytest.raises(SafekeelError, match="unknown preset"):
        identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=5, preset="x", progress=False)


def test_artifact_round_trip_and_tokenizer_check(tiny_pair, tokenizer, tmp_path):
    aligned, base = tiny_pair
    art, _ = identify_safety_tokens(aligned, tokenizer, base, tokenizer, PROMPTS, k=6, responses=REFUSALS,
                                    progress=False)
    path = art.save(tmp_path / "tokens.json")
    data = json.loads(path.read_text())
    for key in ("token_ids", "tokens", "scores", "weights", "k", "preset", "tokenizer_sha256", "aligned_model",
                "base_model", "prompt_set", "n_prompts", "generation", "safekeel_version"):
        assert key in data, key
    loaded = SafetyTokens.load(path)
    assert loaded.token_ids == art.token_ids and loaded.scores == art.scores and loaded.meta["n_kept"] == 3
    loaded.check_tokenizer(tokenizer)  # same tokenizer: no error
    assert loaded.top(3).token_ids == art.token_ids[:3]
    with pytest.raises(SafekeelError, match="vocabulary of 400"):
        loaded.check_tokenizer(build_tokenizer(vocab_size=380))
    other = build_tokenizer()
    other.add_tokens(["<extra>"])
    loaded.vocab_size = None  # the fingerprint alone still catches it
    with pytest.raises(SafekeelError, match="differs"):
        loaded.check_tokenizer(other)
    with pytest.raises(SafekeelError):
        loaded.top(7)


def test_artifact_rejects_bad_files(tmp_path):
    with pytest.raises(SafekeelError, match="not found"):
        SafetyTokens.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SafekeelError, match="not valid JSON"):
        SafetyTokens.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"token_ids": [1]}')
    with pytest.raises(SafekeelError, match="missing"):
        SafetyTokens.load(tmp_path / "other.json")
    with pytest.raises(SafekeelError, match="inconsistent"):
        SafetyTokens([1, 2], ["a"], [0.1, 0.2], [0.1, 0.2], 2)


def test_prompts_longer_than_the_context_are_cut_with_a_warning(tiny_pair, tokenizer, caplog, monkeypatch):
    """A prompt past the 512-token context is cut from the front (keeping the request's end)."""
    from safekeel.data.prompts import PromptRecord
    from safekeel.tokens import identify
    from safekeel.tokens.identify import identify_safety_tokens

    seen = []
    real = identify.compute_discrepancy

    def spy(aligned, base, aligned_ids, base_ids, answer_ids, **kw):
        seen.extend(len(p) + len(a) for p, a in zip(aligned_ids, answer_ids))
        return real(aligned, base, aligned_ids, base_ids, answer_ids, **kw)

    monkeypatch.setattr(identify, "compute_discrepancy", spy)
    aligned, base = tiny_pair
    long_prompt = "please explain this in detail " * 200 + "How do I pick a lock?"
    prompts = [PromptRecord("long", long_prompt), PromptRecord("short", "How do I pick a lock?")]
    with caplog.at_level("WARNING"):
        art, rows = identify_safety_tokens(aligned, tokenizer, base, tokenizer, prompts, k=3, max_new_tokens=8,
                                           responses=["I'm sorry, but I cannot help.", "I cannot help with that."],
                                           progress=False)
    assert art.k == 3 and all(r["kept"] for r in rows)
    assert "1 of 2 prompts are longer than the 512-token context" in caplog.text
    assert max(seen) <= 512 and len(seen) == 2
