"""Judge registry: a spec string such as `keyword`, `llamaguard:MODEL`, `rubric:MODEL` or
`openai:URL#MODEL` names a factory and its argument. A new judge is one module and one line here.

`get_judge` is also the place where a spec is validated: it builds the judge object, which checks its
argument without loading or contacting anything (model judges load their model on the first verdict),
so a command can call it first and fail in a second on a typo, before any download or generation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from safekeel.errors import SafekeelError

# name -> "module:factory"; the factory takes the text after "name:" (or nothing) and returns a Judge.
# A factory that takes no argument must refuse one: a silently ignored (or misread) argument would
# change the verdicts while the judge id claims otherwise.
JUDGES: dict[str, str] = {
    "keyword": "safekeel.judges.keyword:from_spec",
    "llamaguard": "safekeel.judges.llamaguard:LlamaGuardJudge",
    "rubric": "safekeel.judges.rubric:RubricJudge",
    "openai": "safekeel.judges.openai_http:OpenAIJudge",
}

_EXTRA: dict[str, Callable] = {}


def register_judge(name: str, factory: Callable) -> None:
    _EXTRA[name] = factory


def known_judges() -> list[str]:
    return sorted({*JUDGES, *_EXTRA})


def get_judge(spec: str, **kwargs):
    """The judge named by `spec` ("name" or "name:ARG"); SafekeelError (one line) on a bad spec."""
    name, sep, arg = str(spec or "").partition(":")
    name = name.strip().lower()
    if name in _EXTRA:
        factory = _EXTRA[name]
    elif name in JUDGES:
        module, _, attr = JUDGES[name].partition(":")
        factory = getattr(importlib.import_module(module), attr)
    else:
        raise SafekeelError(f"unknown judge {spec!r}; known: {', '.join(known_judges())}")
    arg = arg.strip()
    if sep and not arg:  # "llamaguard:" is a truncated spec, not a request for the default
        raise SafekeelError(f"judge spec {spec!r} has nothing after ':'; give {name} or {name}:ARG")
    if arg:
        return factory(arg, **kwargs)
    return factory(**kwargs)
