"""The defence registry: `--method NAME` -> a `Defence` subclass, imported only when asked for.

`DEFENCES` maps each built-in name to "module:Class"; `register_defence(name, cls_or_target)` adds one
from outside the package (a plugin or a test). Names are unique: registering a taken name is refused
unless `replace=True`. The `train` flags, `safekeel methods` and docs/defences.md's table all read the
registry, so a new defence is one file plus one line here.
"""

from __future__ import annotations

import importlib

from safekeel.errors import SafekeelError

DEFENCES: dict[str, str] = {
    "sft": "safekeel.defences.sft:SFT",
    "kl": "safekeel.defences.kl:FullKL",
    "pact": "safekeel.defences.pact:Pact",
    "constrained_sft": "safekeel.defences.constrained_sft:ConstrainedSFT",
    "safelora": "safekeel.defences.safelora:SafeLoRA",
    "asft": "safekeel.defences.asft:AsFT",
    "safegrad": "safekeel.defences.safegrad:SafeGrad",
    "ewc": "safekeel.defences.ewc:EWC",
    "freeze": "safekeel.defences.freeze:Freeze",
    "lisa": "safekeel.defences.lisa:Lisa",
    "token_weighted": "safekeel.defences.token_weighted:TokenWeighted",
}

_extra: dict[str, object] = {}  # name -> class or "module:Class", from register_defence
_loaded: dict[str, type] = {}


def register_defence(name: str, target, *, replace: bool = False) -> None:
    """Register a `Defence` subclass (or a "module:Class" string, imported on first use) as `name`."""
    name = str(name).strip()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise SafekeelError(f"a defence name must be letters, digits, - or _, got {name!r}")
    if (name in DEFENCES or name in _extra) and not replace:
        raise SafekeelError(f"a defence named {name!r} is already registered (pass replace=True to replace it)")
    if not isinstance(target, str) and getattr(target, "name", None) != name:
        raise SafekeelError(f"{target!r} has name {getattr(target, 'name', None)!r}, registered as {name!r}")
    _extra[name] = target
    _loaded.pop(name, None)


def unregister_defence(name: str) -> None:
    """Remove a defence added with `register_defence` (built-ins stay)."""
    _extra.pop(name, None)
    _loaded.pop(name, None)


def defence_names() -> list[str]:
    """Built-ins in their registry order, then registered ones."""
    return list(DEFENCES) + [n for n in _extra if n not in DEFENCES]


def defence_class(name: str) -> type:
    """The class registered as `name` (imported now); SafekeelError naming the choices otherwise."""
    if name in _loaded:
        return _loaded[name]
    target = _extra.get(name, DEFENCES.get(name))
    if target is None:
        raise SafekeelError(f"unknown --method {name!r}; choose {', '.join(defence_names())} "
                            "(`safekeel methods` describes them)")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        cls = target
    from safekeel.defences.base import Defence

    if not (isinstance(cls, type) and issubclass(cls, Defence)) or cls.name != name:
        raise SafekeelError(f"the defence registered as {name!r} ({target}) is not a Defence named {name!r}")
    _loaded[name] = cls
    return cls


def all_defences() -> dict[str, type]:
    return {name: defence_class(name) for name in defence_names()}


def build_defence(name: str, given: dict | None = None):
    """An instance of defence `name` with its options built from `given` ({option: value})."""
    cls = defence_class(name)
    return cls(cls.options_class.build(dict(given or {})))


def describe() -> list[dict]:
    """One row per registered defence (default options): name, summary, paper, needs, options, modes."""
    import dataclasses

    rows = []
    for name, cls in all_defences().items():
        d = cls()
        needs = [f"--{k.replace('_', '-')}" for k in d.needs()]
        if d.reference:
            needs.append({"safety": "reference K-logits (cached)", "full": "reference logits (live)",
                          "target": "reference answer-token log-probs (live)"}[d.reference])
        needs += [f"--{k.replace('_', '-')} (default)" for k in cls.optional_inputs]
        rows.append({"name": name, "summary": cls.summary, "paper": cls.paper, "needs": needs or ["-"],
                     "options": [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls.options_class)] or ["-"],
                     "lora": "lora" in cls.supports, "full": "full" in cls.supports, "multi_gpu": cls.multi_gpu})
    return rows


def markdown_table() -> str:
    """The registry as the Markdown table in docs/defences.md (a test keeps the two equal)."""
    head = ("| method | what it does | paper | needs | options | LoRA | full | multi-GPU |\n"
            "|---|---|---|---|---|---|---|---|\n")
    yes = {True: "yes", False: "no"}
    return head + "".join(
        f"| `{r['name']}` | {r['summary']} | {r['paper']} | {', '.join(r['needs'])} | "
        f"{', '.join(r['options'])} | {yes[r['lora']]} | {yes[r['full']]} | {r['multi_gpu']} |\n"
        for r in describe())
