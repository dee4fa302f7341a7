"""The safety-token artifact: a portable JSON file written by `safekeel tokens identify`.

Fields (rank order throughout): `token_ids`, `tokens` (decoded strings), `scores` (d, descending for
the paper preset), `weights` (w used by PACT), `k`, `preset`, fingerprints of the aligned model, the
base model and the tokenizer, `vocab_size`, the prompt set and counts, generation settings and the
safekeel version. `SafetyTokens.check_tokenizer` refuses a tokenizer the tokens were not computed with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from safekeel.errors import SafekeelError
from safekeel.io_utils import atomic_write_json

FORMAT = "safekeel.safety_tokens/1"
REQUIRED = ("token_ids", "tokens", "scores", "k", "preset")


@dataclass
class SafetyTokens:
    token_ids: list[int]
    tokens: list[str]
    scores: list[float]
    weights: list[float]
    k: int
    preset: str = "paper"
    tokenizer_sha256: str | None = None
    vocab_size: int | None = None
    meta: dict = field(default_factory=dict)  # fingerprints, prompt set, counts, settings, version

    def __post_init__(self):
        n = len(self.token_ids)
        if not (n == len(self.tokens) == len(self.scores) == len(self.weights)) or n != self.k:
            raise SafekeelError(f"safety-token artifact is inconsistent: k={self.k} but {n} ids, "
                                f"{len(self.tokens)} tokens, {len(self.scores)} scores, {len(self.weights)} weights")
        if len(set(self.token_ids)) != n:
            raise SafekeelError("safety-token artifact has duplicate token ids")

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"format": FORMAT, **asdict(self)}
        out.update(out.pop("meta"))
        return out

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SafetyTokens:
        path = Path(path)
        if not path.is_file():
            raise SafekeelError(f"safety-token file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SafekeelError(f"{path} is not valid JSON: {getattr(exc, 'msg', exc)}") from None
        except OSError as exc:
            raise SafekeelError(f"cannot read {path}: {exc.strerror}") from None
        if not isinstance(data, dict):
            raise SafekeelError(f"{path} is not a safety-token artifact (expected a JSON object)")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise SafekeelError(f"{path} is not a safety-token artifact (missing {', '.join(missing)})")
        known = {"token_ids", "tokens", "scores", "weights", "k", "preset", "tokenizer_sha256", "vocab_size"}
        meta = {k: v for k, v in data.items() if k not in known and k != "format"}
        return cls(
            token_ids=_typed_list(data, "token_ids", int, path),
            tokens=_typed_list(data, "tokens", str, path),
            scores=_typed_list(data, "scores", float, path),
            weights=_typed_list(data, "weights" if "weights" in data else "scores", float, path),
            k=_typed(data["k"], "k", int, path),
            preset=_typed(data["preset"], "preset", str, path),
            tokenizer_sha256=_typed(data.get("tokenizer_sha256"), "tokenizer_sha256", str, path, optional=True),
            vocab_size=_typed(data.get("vocab_size"), "vocab_size", int, path, optional=True),
            meta=meta,
        )

    # ---- use ---------------------------------------------------------------------------------
    def top(self, k: int) -> SafetyTokens:
        """The first k tokens (the artifact is in rank order)."""
        if k <= 0 or k > self.k:
            raise SafekeelError(f"asked for the top {k} safety tokens but the artifact has {self.k}")
        return SafetyTokens(self.token_ids[:k], self.tokens[:k], self.scores[:k], self.weights[:k], k,
                            self.preset, self.tokenizer_sha256, self.vocab_size, dict(self.meta))

    def ids_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.token_ids, dtype=torch.long, device=device)

    def weights_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor(self.weights, dtype=dtype, device=device)

    def check_tokenizer(self, tokenizer, name: str = "the model") -> None:
        """Raise SafekeelError unless `tokenizer` is the one these tokens were computed with."""
        from safekeel.fingerprint import tokenizer_fingerprint

        where = getattr(tokenizer, "name_or_path", "") or name
        if self.vocab_size is not None and len(tokenizer) != self.vocab_size:
            raise SafekeelError(f"safety tokens were computed with a vocabulary of {self.vocab_size} tokens, "
                                f"but the tokenizer of {where} has {len(tokenizer)}")
        if self.tokenizer_sha256 and tokenizer_fingerprint(tokenizer) != self.tokenizer_sha256:
            raise SafekeelError(f"the tokenizer of {where} differs from the one the safety tokens were "
                                "computed with (token→id map fingerprint mismatch)")
        bad = [i for i in self.token_ids if not 0 <= i < len(tokenizer)]
        if bad:
            raise SafekeelError(f"safety token ids {bad[:5]} are outside the tokenizer of {where}")


def _typed(value, name: str, kind: type, path: Path, optional: bool = False):
    """`value` as `kind`, refusing what JSON could hold but the field cannot (a string id, a fractional k,
    a boolean score, a non-finite score) with one line naming the file and field."""
    import math

    if value is None and optional:
        return None
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise SafekeelError(f"{path}: field {name!r} must be {'a finite number' if kind is float else kind.__name__}, "
                            f"got {value!r}")
    return kind(value)


def _typed_list(data: dict, name: str, kind: type, path: Path) -> list:
    values = data[name]
    if not isinstance(values, list):
        raise SafekeelError(f"{path}: field {name!r} must be a list, got {type(values).__name__}")
    return [_typed(v, f"{name}[{i}]", kind, path) for i, v in enumerate(values)]


def identification_prompts(path: str | Path, flag: str = "--tokens"):
    """The prompts the artifact at `path` was identified on, as a `data.leakage.FittedPrompts` named after the
    file, or None when it records none (docs/leakage.md); SafekeelError (one line) when it cannot be read."""
    from safekeel.data.leakage import tokens_group

    try:
        tokens = SafetyTokens.load(path)
    except SafekeelError as exc:
        raise SafekeelError(f"{flag}: {exc}") from None
    return tokens_group(tokens, Path(path).name)
