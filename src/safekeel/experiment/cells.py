"""The cells of a grid: what one cell is, its id and settings, and the expansion of a normalised grid
(grid.py) into cells in run order.

A cell is identified by a readable, stable id (`pact-l3__arith__r0.5__lr2e-4__s1`; `initial__arith` for
the untrained model) and described by `Cell.settings()`, the grid-level settings recorded and hashed in
its cell.json. Blocks are unioned; a cell reached from two blocks is one cell (same id, same settings).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from safekeel.errors import SafekeelError
from safekeel.fingerprint import sha256_json

AXES = ("datasets", "harmful_ratios", "learning_rates", "seeds")
# eval settings that do not change a result (left out of the settings hash)
EVAL_RUNTIME = ("judge_batch_size", "batch_size", "device", "max_judge_errors")
INITIAL = "initial"


@dataclass(frozen=True)
class Cell:
    """One train + safety eval + task eval (or, for the initial model, the two evals)."""

    id: str
    method: str  # the method entry's id; "initial" for the untrained model
    label: str
    defence: str | None  # the registered defence (None: initial)
    dataset: str  # dataset id
    data: str  # training data spec
    task: str  # task spec of `eval task`
    model: str
    harmful_ratio: float | None = None
    learning_rate: float | None = None
    seed: int | None = None
    train: dict = field(default_factory=dict)  # flat `safekeel train` options, output_dir excepted
    eval: dict = field(default_factory=dict)

    @property
    def initial(self) -> bool:
        return self.defence is None

    def settings(self) -> dict:
        """Everything the grid decides about this cell (the label, cosmetic, is not part of it)."""
        return {"model": self.model, "method": self.method, "defence": self.defence, "dataset": self.dataset,
                "data": self.data, "task": self.task, "harmful_ratio": self.harmful_ratio,
                "learning_rate": self.learning_rate, "seed": self.seed, "train": self.train,
                "eval": {k: v for k, v in self.eval.items() if k not in EVAL_RUNTIME}}

    def settings_sha256(self) -> str:
        return sha256_json(self.settings())

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, **self.settings(), "eval": self.eval}

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Grid:
    config: dict  # the normalised grid (written as GRID_DIR/grid.yaml)
    cells: list[Cell]
    root: Path  # GRID_DIR

    def labels(self) -> dict[str, str]:
        return {INITIAL: "initial model", **{m["id"]: m["label"] for m in self.config["methods"]}}


def fmt_lr(x: float) -> str:
    """A learning rate as the cell ids and tables show it: 2e-4, 3e-5, 2.5e-5, 1e-2, 1."""
    mantissa, exp = f"{float(x):e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return mantissa if int(exp) == 0 else f"{mantissa}e{int(exp)}"


def _cell(config: dict, method: dict | None, dataset: dict, ratio=None, lr=None, seed=None) -> Cell:
    if method is None:
        return Cell(f"{INITIAL}__{dataset['id']}", INITIAL, "initial model", None, dataset["id"], dataset["name"],
                    dataset["task"], config["model"], eval=config["eval"])
    if ratio and not config["harmful"]:
        raise SafekeelError(f"harmful_ratios: {ratio:g} needs `harmful:` (the harmful set to mix in)")
    cid = f"{method['id']}__{dataset['id']}__r{ratio:g}__lr{fmt_lr(lr)}__s{seed}"
    train = {**config["train"], **method["options"], "method": method["name"], "model": config["model"],
             "dataset": dataset["name"], "learning_rate": lr, "seed": seed}
    train.setdefault("disable_tqdm", True)
    if config["harmful"]:
        train.update(harmful=config["harmful"], poison_ratio=ratio)
    return Cell(cid, method["id"], method["label"], method["name"], dataset["id"], dataset["name"], dataset["task"],
                config["model"], ratio, lr, seed, train, config["eval"])


def expand(config: dict) -> list[Cell]:
    """Every cell in run order: the initial model's cells first, then each seed's cells (block order), so
    a partly run grid has every setting at its first seed."""
    methods = {m["id"]: m for m in config["methods"]}
    datasets = {**{d["name"]: d for d in config["datasets"]}, **{d["id"]: d for d in config["datasets"]}}
    found: dict[str, tuple[int, int, Cell]] = {}
    for block in config["blocks"] or [{"name": "grid", "methods": list(methods)}]:
        for mid in block["methods"] or list(methods):
            m = methods[mid]
            axes = {a: block.get(a, m.get(a, config.get(a))) for a in AXES[1:]}
            axes["datasets"] = block.get("datasets", m.get("datasets")) or [d["id"] for d in config["datasets"]]
            for a in AXES[1:]:
                if not axes[a]:
                    raise SafekeelError(f"method {mid}: no {a} (set {a} at the top, in the block or the method)")
            for rank, seed in enumerate(axes["seeds"]):
                for d in axes["datasets"]:
                    for ratio in axes["harmful_ratios"]:
                        for lr in axes["learning_rates"]:
                            c = _cell(config, m, datasets[d], ratio, lr, seed)
                            if c.id in found and found[c.id][2].settings() != c.settings():
                                raise SafekeelError(f"two different cells would be named {c.id} (numbers "
                                                    "that differ below the id's precision?)")
                            found.setdefault(c.id, (rank, len(found), c))
    cells = [c for _, _, c in sorted(found.values(), key=lambda t: t[:2])]
    if config["initial"]:
        used = list(dict.fromkeys(c.dataset for c in cells)) or [d["id"] for d in config["datasets"]]
        cells = [_cell(config, None, datasets[d]) for d in used] + cells
    if config["cells"]:
        for pattern in config["cells"]:
            if not any(fnmatch.fnmatchcase(c.id, pattern) for c in cells):
                raise SafekeelError(f"cells: {pattern!r} matches no cell of the grid")
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in config["cells"])]
    if not cells:
        raise SafekeelError("the grid has no cells (no methods and initial: false?)")
    return cells


def select(cells: list[Cell], patterns: list[str] | None) -> list[Cell]:
    """The cells whose id matches one of the glob `patterns` (all when none); SafekeelError when one matches nothing."""
    if not patterns:
        return cells
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c.id, p) for c in cells):
            raise SafekeelError(f"--only {p!r} matches no cell (ids look like {cells[-1].id}; globs: 'pact*')")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
