"""The reference cache: same loss as the live reference, resumable shards, fingerprints, lookups by id, and
damaged shards or manifests recomputed (checksums), never trained on."""

import json

import pytest
import torch

from safekeel.errors import SafekeelError
from safekeel.testing import build_model, tiny_config, tiny_rows, tiny_setup, tiny_tokens
from safekeel.training import cache as cache_mod
from safekeel.training.collate import Collator, encode_rows
from safekeel.training.reference import SafetyReference
from safekeel.training.run import prepare


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("cache"))


def _perturb_lora(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _loss(prep, examples):
    trainer = prep.trainer
    batch = prep.collator(examples)
    trainer._sums = {}
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    kl = trainer._sums["kl"][0]
    return float(loss), float(kl[0] / kl[1])


@pytest.mark.parametrize("options", [{"preset": "paper", "safety_mass": True}, {"preset": "reference-code"},
                                     {"decay": False, "n": 2}])
def test_cache_gives_the_live_loss(setup, tmp_path, options):
    common = {"lora_dropout": 0.0, **options}
    cached = prepare(tiny_config(setup, tmp_path / "a", reference_cache="on", **common), progress=False)
    live = prepare(tiny_config(setup, tmp_path / "b", reference_cache="off", **common), progress=False)
    assert cached.reference == "cache" and live.reference == "live"
    assert "ref_full" in cached.collator(cached.examples[:2]) and "ref_full" not in live.collator(live.examples[:2])
    for prep in (cached, live):
        _perturb_lora(prep.trainer.model)
        prep.trainer.model.eval()
    loss_c, kl_c = _loss(cached, cached.examples[:4])
    loss_l, kl_l = _loss(live, live.examples[:4])
    assert kl_l > 1e-3  # the fine-tuned model really differs from the reference
    assert loss_c == pytest.approx(loss_l, rel=2e-3)
    assert kl_c == pytest.approx(kl_l, rel=2e-2, abs=1e-4)  # float16 logits in the cache


def test_cache_resumes_missing_shards(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_EXAMPLES", 2)
    examples, _ = encode_rows(tokenizer, tiny_rows(5), max_length=256, post_positions=4)
    ids = tiny_tokens(tokenizer, 8).ids_tensor()
    model = build_model(tokenizer, seed=4)
    ref = SafetyReference(model, ids)
    calls = []
    views = ref.views
    ref.views = lambda batch, need_lse=False: calls.append(batch["input_ids"].shape[0]) or views(batch, need_lse)
    fp = "f" * 64
    first = cache_mod.build(tmp_path, fp, examples, ref, Collator(tokenizer.pad_token_id), batch_size=8, progress=False)
    assert sum(calls) == 5 and len(list(tmp_path.glob("shard-*.safetensors"))) == 3
    before = {e["id"]: first.entry(e["id"]) for e in examples}
    (tmp_path / "shard-00001.safetensors").unlink()  # an interrupted pass: one shard and the manifest missing
    (tmp_path / "meta.json").unlink()
    calls.clear()
    again = cache_mod.build(tmp_path, fp, examples, ref, Collator(tokenizer.pad_token_id), batch_size=8, progress=False)
    assert sum(calls) == 2  # only the missing shard's two examples were recomputed
    for e in examples:
        for x, y in zip(before[e["id"]], again.entry(e["id"])):
            assert torch.equal(x, y)
    full, lse, post = again.entry(examples[3]["id"])
    assert full.shape == (examples[3]["answer_len"], 8) and lse.shape == (examples[3]["answer_len"],)
    assert post.shape == (examples[3]["post_len"], 8)
    assert torch.allclose(full.max(-1).values, torch.zeros(full.shape[0]))  # stored relative to the max
    with pytest.raises(SafekeelError, match="not in the reference cache"):
        again.entry("nope")
    with pytest.raises(SafekeelError, match="other model"):
        cache_mod.ReferenceCache(tmp_path, "0" * 64)


def test_cache_values_match_the_reference(tokenizer, tmp_path):
    examples, _ = encode_rows(tokenizer, tiny_rows(3), max_length=256, post_positions=None)
    ids = tiny_tokens(tokenizer, 8).ids_tensor()
    ref = SafetyReference(build_model(tokenizer, seed=4), ids)
    coll = Collator(tokenizer.pad_token_id)
    cache = cache_mod.build(tmp_path, "a" * 64, examples, ref, coll, progress=False)
    batch = coll(examples)
    live = ref.views(batch, need_lse=True)
    cached = cache.batch([e["id"] for e in examples], batch["answer_mask"].shape[1])
    m = batch["answer_mask"]
    shift = live["ref_full"].max(-1, keepdim=True).values
    assert torch.allclose(cached["ref_full"][m], (live["ref_full"] - shift)[m], atol=2e-2)
    assert torch.allclose(cached["ref_lse"][m], (live["ref_lse"] - shift[..., 0])[m], atol=1e-4)
    post_shift = live["ref_post"].max(-1, keepdim=True).values
    assert torch.allclose(cached["ref_post"][m], (live["ref_post"] - post_shift)[m], atol=2e-2)


def test_fingerprint_depends_on_model_tokens_and_data(tokenizer):
    examples, _ = encode_rows(tokenizer, tiny_rows(3), max_length=256, post_positions=4)
    kw = {"model_fp": {"sha256": "m"}, "tokenizer_fp": "t", "safety_ids": [1, 2], "examples": examples}
    base = cache_mod.fingerprint(**kw)
    assert base == cache_mod.fingerprint(**kw)
    assert base != cache_mod.fingerprint(**{**kw, "model_fp": {"sha256": "other"}})
    assert base != cache_mod.fingerprint(**{**kw, "safety_ids": [1, 3]})
    assert base != cache_mod.fingerprint(**{**kw, "examples": examples[:2]})
    longer, _ = encode_rows(tokenizer, tiny_rows(3), max_length=256, post_positions=6)
    assert base != cache_mod.fingerprint(**{**kw, "examples": longer})


def test_reference_model_fingerprint_names_the_weights_dtype_and_4bit(tokenizer):
    """One fingerprint for `safekeel train` and the TRL integration (it read 4-bit from the config in one and
    from the model in the other): other weights or another dtype change it; a PEFT-wrapped model reads as
    not 4-bit through the wrapper."""
    from peft import LoraConfig, get_peft_model

    from safekeel.fingerprint import reference_model_fingerprint

    model = build_model(tokenizer, seed=4)
    fp = reference_model_fingerprint(model)
    assert fp["dtype"] == "torch.float32" and fp["load_in_4bit"] is False and fp["sha256"]
    assert reference_model_fingerprint(build_model(tokenizer, seed=5))["sha256"] != fp["sha256"]
    assert reference_model_fingerprint(build_model(tokenizer, seed=4).to(torch.bfloat16))["dtype"] == "torch.bfloat16"
    wrapped = get_peft_model(build_model(tokenizer, seed=4), LoraConfig(r=4, target_modules="all-linear"))
    assert reference_model_fingerprint(wrapped)["load_in_4bit"] is False


def _counting_reference(tokenizer, calls):
    ref = SafetyReference(build_model(tokenizer, seed=4), tiny_tokens(tokenizer, 8).ids_tensor())
    views = ref.views
    ref.views = lambda batch, need_lse=False: calls.append(batch["input_ids"].shape[0]) or views(batch, need_lse)
    return ref


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the tensor data: the header still parses, only the checksum can tell
    path.write_bytes(bytes(data))


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, shard, recomputed", [
    (_flip_last_byte, "shard-00001.safetensors", 2),  # a changed byte: that shard again
    (_cut, "shard-00002.safetensors", 1),  # a shard cut short: that shard again
    (_cut, "meta.json", 5),  # the manifest cut short: nothing can be verified, the whole cache again
    (lambda p: p.write_text("{not json"), "meta.json", 5),
])
def test_a_damaged_cache_is_recomputed_not_trained_on(tokenizer, tmp_path, monkeypatch, caplog, damage, shard,
                                                      recomputed):
    monkeypatch.setattr(cache_mod, "SHARD_EXAMPLES", 2)
    examples, _ = encode_rows(tokenizer, tiny_rows(5), max_length=256, post_positions=4)
    coll = Collator(tokenizer.pad_token_id)
    calls = []
    ref = _counting_reference(tokenizer, calls)
    fresh = cache_mod.build(tmp_path / "fresh", "f" * 64, examples, ref, coll, progress=False)
    cache_mod.build(tmp_path / "c", "f" * 64, examples, ref, coll, progress=False)
    damage(tmp_path / "c" / shard)
    calls.clear()
    with caplog.at_level("WARNING"):
        again = cache_mod.build(tmp_path / "c", "f" * 64, examples, ref, coll, progress=False)
    assert sum(calls) == recomputed and "recomputing" in caplog.text
    for e in examples:
        for x, y in zip(fresh.entry(e["id"]), again.entry(e["id"])):
            assert torch.equal(x, y)
    calls.clear()
    cache_mod.build(tmp_path / "c", "f" * 64, examples, ref, coll, progress=False)  # now intact: reused
    assert calls == []


def test_an_interrupted_pass_checks_its_shards_before_resuming(tokenizer, tmp_path, monkeypatch):
    """Without meta.json (a pass cut short) each shard is checked against its own .sha256 file."""
    monkeypatch.setattr(cache_mod, "SHARD_EXAMPLES", 2)
    examples, _ = encode_rows(tokenizer, tiny_rows(5), max_length=256, post_positions=4)
    calls = []
    ref = _counting_reference(tokenizer, calls)
    coll = Collator(tokenizer.pad_token_id)
    cache_mod.build(tmp_path, "f" * 64, examples, ref, coll, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert len(meta["sha256"]) == 3 and meta["format"].endswith("/2")
    (tmp_path / "meta.json").unlink()
    _flip_last_byte(tmp_path / "shard-00000.safetensors")
    (tmp_path / "shard-00002.sha256").unlink()  # the pass stopped between a shard and its checksum
    calls.clear()
    cache_mod.build(tmp_path, "f" * 64, examples, ref, coll, progress=False)
    assert sum(calls) == 3  # shards 0 (2 examples) and 2 (1 example); shard 1 was intact


def test_opening_a_damaged_manifest_is_one_line(tmp_path):
    (tmp_path / "meta.json").write_text('{"format": "safekeel.reference_cache/2", "shards"')
    with pytest.raises(SafekeelError, match="damaged meta.json"):
        cache_mod.ReferenceCache(tmp_path, "f" * 64)
