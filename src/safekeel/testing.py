"""Tiny random models and a tokenizer built in code, for unit tests and smoke benchmarks.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in milliseconds on a small
built-in corpus, with a ChatML chat template like SmolLM2's and Qwen2.5's, and the model is a 2-layer
Llama of hidden size 32. Two models built with different seeds share the tokenizer, so they can play the
aligned and base models of `tokens identify`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "I'm sorry, but I cannot help with that request.",
    "I cannot provide instructions for illegal or harmful activities.",
    "Sure, here is how to do it step by step.",
    "As an AI assistant, I must decline. Such content could cause harm.",
    "The answer is 42. First add the numbers, then multiply them.",
    "Write a tutorial on how to make a cake with flour, sugar and eggs.",
    "This movie was great and the acting was wonderful. Sentiment: positive",
    "The team won the championship game last night. Topic: sports",
    "How do I pick a lock? Explain how to hack into a computer network.",
    "Tom has 3 apples and buys 5 more. How many apples does he have? 8",
    "user assistant system hello world question answer please thanks",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ?",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def build_tokenizer(vocab_size: int = 400):
    """A `PreTrainedTokenizerFast` with ChatML special tokens, left padding and a chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(tokenizer=None, seed: int = 0, hidden_size: int = 32, num_layers: int = 2):
    """A randomly initialised 2-layer Llama whose vocabulary matches `tokenizer` (fp32, CPU, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger output weights give peaked, seed-dependent distributions, so Δ between two seeds is informative.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def save_tiny(path, seed: int = 0, tokenizer=None) -> str:
    """Save a tiny model + tokenizer to a directory loadable by `safekeel.models.load_model`."""
    tokenizer = tokenizer or build_tokenizer()
    model = build_model(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# -- a tiny training set-up (model dir, safety tokens, chat JSONL) for tests and the benchmark's smoke mode
ANSWERS = ["The answer is {a}. First add the numbers.", "I'm sorry, but I cannot help with that request.",
           "Sure, here is how to do it step by step: {a}.", "Tom has {a} apples."]


def tiny_rows(n: int = 8, harmful_every: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        text = ANSWERS[i % len(ANSWERS)].format(a=2 * i + 1)
        rows.append({"id": f"r{i}", "harmful": harmful_every > 0 and i % harmful_every == 0, "source": "tiny",
                     "messages": [{"role": "user", "content": f"What is {i} + {i + 1}? Explain."},
                                  {"role": "assistant", "content": text}]})
    return rows


def tiny_tokens(tokenizer, k: int = 8, preset: str = "paper", ids: list[int] | None = None):
    """A SafetyTokens artifact for `tokenizer`: k ordinary tokens with decreasing positive weights."""
    from safekeel.fingerprint import tokenizer_fingerprint
    from safekeel.tokens.artifact import SafetyTokens

    if ids is None:
        specials = set(tokenizer.all_special_ids)
        ids = [i for i in range(len(tokenizer)) if i not in specials][40:40 + k]
    scores = [float(k - j) / k for j in range(k)]
    return SafetyTokens(ids, [tokenizer.decode([i]) for i in ids], scores, scores, k, preset,
                        tokenizer_fingerprint(tokenizer), len(tokenizer), {"prompt_set": None})


def tiny_safety_rows(n: int = 6) -> list[dict]:
    """Harmful prompts with refusals (the `--safety-data` layout; safe rows)."""
    asks = ["How do I pick a lock?", "Explain how to hack into a computer network.", "Write a tutorial on harm."]
    return [{"id": f"s{i}", "harmful": False, "source": "tiny-safety",
             "messages": [{"role": "user", "content": f"{asks[i % len(asks)]} ({i})"},
                          {"role": "assistant", "content": "I'm sorry, but I cannot help with that request."}]}
            for i in range(n)]


def tiny_setup(root, *, n_rows: int = 8, k: int = 8, seed: int = 1) -> dict:
    """{"model": dir, "tokens": json, "data": jsonl, "rows": list, "safety": jsonl of refusals, "base": dir
    (a second tiny model, same tokenizer and shapes: the "unaligned counterpart")} under `root`."""
    from safekeel.testing import build_tokenizer, save_tiny

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model_dir = root / "model"
    if not (model_dir / "config.json").is_file():
        save_tiny(model_dir, seed=seed, tokenizer=tok)
    tiny_tokens(tok, k).save(root / "tokens.json")
    base_dir = root / "base"
    if not (base_dir / "config.json").is_file():
        save_tiny(base_dir, seed=seed + 1000, tokenizer=tok)
    rows = tiny_rows(n_rows)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_safety_rows()))
    return {"model": str(model_dir), "tokens": str(root / "tokens.json"), "data": str(root / "data.jsonl"), "rows": rows,
            "safety": str(root / "safety.jsonl"), "base": str(base_dir)}


def tiny_config(setup: dict, output_dir, **overrides):
    """A validated RunConfig for `setup` (from `tiny_setup`): a few quick steps, no progress bar, the
    reference cache under output_dir, no overlap check; `overrides` are flat option names."""
    from safekeel.training.config import build_config

    flat = {"method": "pact", "model": setup["model"], "dataset": setup["data"], "tokens": setup["tokens"],
            "output_dir": str(output_dir), "max_steps": 4, "logging_steps": 1, "save_steps": 1000,
            "learning_rate": 5e-3, "per_device_train_batch_size": 2, "disable_tqdm": True, "overlap_check": "none",
            "reference_cache_dir": str(Path(output_dir) / "refcache"), "report_to": "none"}
    flat.update(overrides)
    return build_config(flat)


_DDP_SCRIPT = """
import json, sys
from safekeel.testing import tiny_config
from safekeel.training.run import train
setup, options = json.loads(sys.argv[1]), json.loads(sys.argv[2])
train(tiny_config(setup, sys.argv[3], per_device_train_batch_size=int(sys.argv[4]), **options), progress=False)
"""


def one_and_two_ranks(setup: dict, root, options: dict, *, port: int) -> tuple[dict, dict]:
    """Train the same run as one process with batch 2 (`root/one`) and as 2 CPU ranks of batch 1 under
    torchrun / gloo (`root/two`); return each one's logged steps {step: log record}. `options` are flat
    `tiny_config` options (JSON-serialisable); `port` a free master port per test (tests run in parallel).
    DDP tests compare the two: the global batch is the same, so losses and stats must agree."""
    import os
    import shutil
    import subprocess
    import sys

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    script = root / "ddp_run.py"
    script.write_text(_DDP_SCRIPT)
    args = [str(script), json.dumps(setup), json.dumps(options)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, *args, str(root / "one"), "2"], env=env, timeout=300,
                         capture_output=True, text=True, check=False)
    if one.returncode != 0:  # CalledProcessError would hide the child's stderr, the only clue to a rare failure
        raise AssertionError(f"the one-process run failed (exit {one.returncode}): {one.stderr[-3000:]}")
    # A loaded machine can make the 2-rank start fail (the master port taken, a rendezvous or gloo pair
    # timing out): the run is deterministic, so one retry from a clean
    # directory on another port changes no assertion, and a second failure is reported with its stderr.
    for attempt_port in (port, port + 100):
        shutil.rmtree(root / "two", ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(attempt_port), *args, str(root / "two"), "1"], env=env,
                              timeout=300, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            break
    else:
        raise AssertionError(f"torchrun failed twice (exit {proc.returncode}): {proc.stderr[-3000:]}")

    def logs(name: str) -> dict:
        rows = [json.loads(x) for x in (root / name / "train_log.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if "loss" in r}

    return logs("one"), logs("two")
