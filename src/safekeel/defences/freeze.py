"""`freeze`: freeze chosen decoder layers during fine-tuning and train the rest (selective fine-tuning).

Idea (the seed article's "Layer Freezing and Selective Fine-Tuning"; Li et al. 2024, "Safety Layers in
Aligned Large Language Models", arXiv:2408.17003, whose SPPFT freezes the "safety layers"): a few
decoder layers carry most of the refusal behaviour; if fine-tuning cannot move them, the update has to
go elsewhere. The layers are chosen with `--freeze-layers`:

- indices and inclusive ranges, comma-separated: `0-3,7`; a negative index counts from the end
  (`-1` is the last layer, `-4--1` the last four); duplicates and overlaps are merged;
- `top:N`: the N layers ranked highest in a ranking file from `safekeel layers rank` (`--layer-ranking`),
  i.e. the layers whose ablation lowers the refusal rate most (`evaluation/layer_rank.py`). This is how
  layers are found here, by ablation, not by the paper's cosine-similarity analysis. Items combine:
  `top:2,0`.

Choices: the parameters of a frozen layer that would otherwise train get `requires_grad=False` in
`configure_model` (after LoRA wrapping, before the optimizer exists), so the optimizer never holds them
and neither gradients nor weight decay can move them: with LoRA the layer's adapter factors keep their
initial values (lora_B stays 0, so the layer's update is exactly zero); with `--full` all of the
layer's weights stay bit-for-bit the same. Embeddings, the final norm and the head are not decoder
layers and keep training under `--full`. The default (`0`, the first layer) only exists so that the
method runs without flags; rank the layers of your model and pass `top:N` for a real defence.
Layers are found by module, not by name (`decoder_layers`): known paths first (`model.layers` for
Llama/Qwen/Mistral, `transformer.h` for GPT-2, ...), through a PEFT wrapper, then the largest
ModuleList named layers/h/blocks.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from safekeel.defences.base import Defence, DefenceOptions
from safekeel.errors import SafekeelError

log = logging.getLogger(__name__)

FLAG = "--freeze-layers"
_RANGE = re.compile(r"^(-?\d+)(?:-(-?\d+))?$")  # "7", "-1", "0-3", "-4--1"
_TOP = re.compile(r"^top:(\d+)$")
# where transformers keeps the decoder stack (tried in order, below a PEFT wrapper)
_KNOWN_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.blocks",
                "model.language_model.layers", "language_model.model.layers", "transformer.layers", "layers")
_LIST_NAMES = re.compile(r"(^|\.)(layers|h|blocks)$")


@dataclass
class FreezeOptions(DefenceOptions):
    freeze_layers: str = field(default="0", metadata={"help": (
        "decoder layers to freeze: indices and inclusive ranges (0-3,7; negative counts from the end, -1 is "
        "the last layer), and/or top:N, the N layers ranked highest by --layer-ranking"), "list": True})
    layer_ranking: str | None = field(default=None, metadata={"help": (
        "ranking JSON written by `safekeel layers rank` (needed by --freeze-layers top:N)")})

    def finalize(self) -> None:
        spec = parse_layer_spec(self.freeze_layers)
        if spec.top is not None and not self.layer_ranking:
            raise SafekeelError(f"{FLAG} top:{spec.top} needs --layer-ranking FILE (from `safekeel layers rank`)")


@dataclass(frozen=True)
class LayerSpec:
    """A parsed `--freeze-layers`: inclusive (start, end) ranges as written (negative = from the end),
    and N of `top:N` (None without)."""

    ranges: tuple[tuple[int, int], ...]
    top: int | None
    text: str


def parse_layer_spec(text: str) -> LayerSpec:
    """The syntax of `--freeze-layers` (no model needed); SafekeelError naming the flag on a bad item."""
    text = str(text or "").strip()
    items = [t.strip().replace(" ", "") for t in text.split(",")]
    if not text or not all(items):
        raise SafekeelError(f"{FLAG} {text!r}: give layer indices or ranges (0-3,7) or top:N")
    ranges, top = [], None
    for item in items:
        if m := _TOP.match(item.lower()):
            if top is not None:
                raise SafekeelError(f"{FLAG} {text!r}: give top:N once")
            top = int(m.group(1))
            if top < 1:
                raise SafekeelError(f"{FLAG} {text!r}: top:N needs N >= 1")
        elif m := _RANGE.match(item):
            start = int(m.group(1))
            ranges.append((start, int(m.group(2)) if m.group(2) is not None else start))
        else:
            raise SafekeelError(f"{FLAG} {text!r}: cannot read {item!r}; give indices, ranges (0-3, -4--1) or top:N")
    return LayerSpec(tuple(ranges), top, text)


def resolve_layers(spec: LayerSpec | str, n_layers: int, ranking: list[int] | None = None) -> list[int]:
    """The sorted, de-duplicated layer indices a spec names in a model of `n_layers` decoder layers;
    `ranking` is the layer order of a ranking file (best first), needed by top:N."""
    spec = parse_layer_spec(spec) if isinstance(spec, str) else spec

    def index(i: int) -> int:
        if not -n_layers <= i < n_layers:
            raise SafekeelError(f"{FLAG} {spec.text}: layer {i} is out of range: the model has {n_layers} decoder "
                                f"layers (0 to {n_layers - 1}, or -{n_layers} to -1)")
        return i % n_layers

    chosen: set[int] = set()
    for start, end in spec.ranges:
        a, b = index(start), index(end)
        if a > b:
            raise SafekeelError(f"{FLAG} {spec.text}: the range {start}-{end} runs backwards (layers {a} to {b})")
        chosen.update(range(a, b + 1))
    if spec.top is not None:
        if ranking is None:
            raise SafekeelError(f"{FLAG} top:{spec.top} needs --layer-ranking FILE (from `safekeel layers rank`)")
        if spec.top > len(ranking):
            raise SafekeelError(f"{FLAG} top:{spec.top}: the ranking lists only {len(ranking)} layers")
        chosen.update(index(i) for i in ranking[:spec.top])
    return sorted(chosen)


def read_layer_ranking(path: str) -> tuple[list[int], int | None, dict]:
    """(layer indices best first, as listed in the file's "layers"; the ranked model's layer count or None;
    the whole file) of a `safekeel layers rank` JSON. One-line SafekeelError naming --layer-ranking."""
    from safekeel.checks import input_file

    input_file(path, "--layer-ranking")
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        order = [int(r["layer"]) for r in data["layers"]]
        n_layers = data.get("n_layers")
        n_layers = None if n_layers is None else int(n_layers)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SafekeelError(f"--layer-ranking {path} is not a ranking from `safekeel layers rank` "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'bad field'})") from None
    if not order or len(set(order)) != len(order) or min(order) < 0:
        raise SafekeelError(f"--layer-ranking {path}: its layers must be distinct indices >= 0 (got {order[:8]})")
    return order, n_layers, data


def decoder_layers(model) -> tuple[str, list]:
    """(dotted path, [decoder layer modules]) of a transformers causal LM, through a PEFT wrapper:
    a known path first, else the ModuleList named layers/h/blocks holding the most parameters."""
    from torch import nn

    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    for path in _KNOWN_PATHS:
        obj = inner
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return path, list(obj)
    found = [(sum(p.numel() for p in m.parameters()), name, m) for name, m in inner.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and _LIST_NAMES.search(name)]
    if not found:
        raise SafekeelError(f"found no decoder layers in {type(inner).__name__} (looked for model.layers, "
                            "transformer.h and any ModuleList named layers, h or blocks)")
    _, name, modules = max(found, key=lambda t: t[0])
    return name, list(modules)


def freeze_layer_parameters(model, layers: list) -> tuple[list[str], int]:
    """Set requires_grad=False on every trainable parameter inside `layers` (modules of `model`);
    returns (their names in `model`, the number of elements frozen)."""
    names = {id(p): n for n, p in model.named_parameters()}
    frozen, count = [], 0
    for layer in layers:
        for p in layer.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen.append(names.get(id(p), "?"))
                count += p.numel()
    return frozen, count


class Freeze(Defence):
    name = "freeze"
    summary = ("freeze chosen decoder layers (indices, or the top N of `safekeel layers rank`) and fine-tune the "
               "rest")
    paper = "Li et al. 2024, Safety Layers in Aligned Large Language Models (arXiv:2408.17003); layers found by ablation"
    options_class = FreezeOptions
    multi_gpu = "DDP (FSDP, DeepSpeed untested)"

    def __init__(self, options=None):
        super().__init__(options)
        self.spec = parse_layer_spec(self.options.freeze_layers)
        self.ranking: tuple[list[int], int | None, dict] | None = None  # (order, n_layers, file) for top:N
        self.frozen_layers: list[int] = []
        self.frozen_share = 0.0

    def _ranking(self) -> tuple[list[int], int | None, dict] | None:
        if self.spec.top is not None and self.ranking is None:
            self.ranking = read_layer_ranking(self.options.layer_ranking)
        return self.ranking

    def check(self, cfg) -> None:
        super().check(cfg)
        ranking = self._ranking()  # a missing or unreadable ranking file: one line before any load
        if self.options.layer_ranking and self.spec.top is None:
            log.warning("--layer-ranking is read only with --freeze-layers top:N; %s names layers itself",
                        self.spec.text)
        if ranking is not None:
            if self.spec.top > len(ranking[0]):
                raise SafekeelError(f"{FLAG} top:{self.spec.top}: --layer-ranking {self.options.layer_ranking} "
                                    f"lists only {len(ranking[0])} layers")
            ranked_model = ranking[2].get("model")
            if ranked_model and cfg.model and str(ranked_model) != str(cfg.model):
                log.warning("--layer-ranking %s ranks the layers of %s, not of --model %s",
                            self.options.layer_ranking, ranked_model, cfg.model)

    def configure_model(self, model):
        path, layers = decoder_layers(model)
        ranking = self._ranking()
        if ranking is not None and ranking[1] is not None and ranking[1] != len(layers):
            raise SafekeelError(f"--layer-ranking {self.options.layer_ranking} ranks a model with {ranking[1]} "
                                f"decoder layers; this model has {len(layers)}")
        self.frozen_layers = resolve_layers(self.spec, len(layers), ranking[0] if ranking else None)
        names, count = freeze_layer_parameters(model, [layers[i] for i in self.frozen_layers])
        left = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if left == 0:
            raise SafekeelError(f"{FLAG} {self.spec.text} freezes every trainable parameter (layers "
                                f"{_short(self.frozen_layers)} of {len(layers)}): nothing is left to train; freeze "
                                "fewer layers (LoRA adapters sit only in decoder layers)")
        if count == 0:
            log.warning("%s %s: layers %s hold no trainable parameter; nothing was frozen", FLAG, self.spec.text,
                        _short(self.frozen_layers))
        self.frozen_share = count / (count + left)
        log.info("freeze: froze decoder layers %s of %d (%s): %d tensors, %d of %d trainable parameters (%.1f%%)",
                 _short(self.frozen_layers), len(layers), path, len(names), count, count + left,
                 100 * self.frozen_share)
        return model

    def before_optimizer_step(self, model, optimizer, state) -> dict:
        """Constants, logged once per optimizer step so every record says what was frozen: the number of
        frozen layers and the share of the otherwise trainable parameters they hold (per step, not per row:
        a harmful/benign split of a constant would mean nothing)."""
        return {"frozen_layers": float(len(self.frozen_layers)), "frozen_share": float(self.frozen_share)}


def _short(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts)
