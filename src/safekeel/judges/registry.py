"""Judge registry: a spec string such as `keyword`, `llamaguard:MODEL`, `rubric:MODEL` or
`openai:URL#MODEL` names a factory and its argument. A new judge is one module and one line here."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from safekeel.errors import SafekeelError

# name -> "module:factory"; the factory takes the text after "name:" (or None) and returns a Judge.
JUDGES: dict[str, str] = {
    "keyword": "safekeel.judges.keyword:KeywordJudge",
    "llamaguard": "safekeel.judges.llamaguard:LlamaGuardJudge",
    "rubric": "safekeel.judges.rubric:RubricJudge",
    "openai": "safekeel.judges.openai_http:OpenAIJudge",
}

_EXTRA: dict[str, Callable] = {}


def register_judge(name: str, factory: Callable) -> None:
    _EXTRA[name] = factory


def get_judge(spec: str, **kwargs):
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    if name in _EXTRA:
        factory = _EXTRA[name]
    elif name in JUDGES:
        module, _, attr = JUDGES[name].partition(":")
        factory = getattr(importlib.import_module(module), attr)
    else:
        raise SafekeelError(f"unknown judge {spec!r}; known: {', '.join(sorted({*JUDGES, *_EXTRA}))}")
    if arg:
        return factory(arg, **kwargs)
    return factory(**kwargs)
