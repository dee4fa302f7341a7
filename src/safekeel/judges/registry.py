"""Judge registry: a spec string such as `keyword`, `keyword:gcg`, `llamaguard:MODEL`, `rubric:MODEL` or
`openai:URL#MODEL` names a factory and its argument. A new judge is one module and one line here.

`get_judge` is also the place where a spec is validated: it builds the judge object, which checks its
argument without loading or contacting anything (model judges load their model on the first verdict),
so a command can call it first and fail in a second on a typo, before any download or generation.

Several judges are a comma list (`keyword,rubric:MODEL`; `split_judge_specs`). A spec may itself hold
commas (a URL or a model path), so the rule is: a comma starts a new judge only when the text after it
begins with a known judge name followed by ':' or by the next comma or the end (`keyword`,
`rubric:…`, `openai:…`); any other comma stays inside the spec before it. Empty entries are ignored.
So `openai:http://h:8000#a,b,keyword` is two judges (`openai:http://h:8000#a,b` and `keyword`), and
`rubric:/m/a,keywords` one; a spec with a comma followed by exactly a judge name (`…,keyword` at its
end or before another comma, `…,rubric:…`) cannot be written in a comma list (a grid's `eval.judge`
takes a YAML list, whose items are never split). `build_judges` builds them all with the options a command
passes to its model judges.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

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


def split_judge_specs(text: str) -> list[str]:
    """The judge specs of a comma list (see the module docstring for where a comma splits)."""
    names = set(known_judges())
    specs: list[str] = []
    for piece in str(text or "").split(","):
        if not piece.strip():
            continue
        if specs and piece.strip().partition(":")[0].strip().lower() not in names:
            specs[-1] += "," + piece  # not a judge name: the comma belongs to the spec before it
        else:
            specs.append(piece)
    return [s.strip() for s in specs]


def build_judges(specs: str | Sequence[str], *, judge_format: str | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8, trust_remote_code: bool = False,
                 judge_flag: str = "--judge", format_flag: str = "--judge-format") -> list:
    """The judges of `specs` (a comma list or a list of specs; the first is the primary judge), each built
    and so checked without loading a model or contacting a server. Model judges (llamaguard, rubric)
    get the device, dtype, batch size and trust_remote_code; openai judges `judge_format` (which is an
    error when no judge is an openai one). SafekeelError, one line naming `judge_flag`, on no judge or a
    judge given twice. `judge_flag` / `format_flag` name the settings in messages."""
    items = split_judge_specs(specs) if isinstance(specs, str) else [str(x).strip() for x in specs if str(x).strip()]
    if not items:
        raise SafekeelError(f"{judge_flag} names no judge; e.g. {judge_flag} keyword or keyword,rubric:MODEL")
    names = [x.partition(":")[0].strip().lower() for x in items]
    if judge_format is not None and "openai" not in names:
        shown = specs if isinstance(specs, str) else ",".join(items)
        raise SafekeelError(f"{format_flag} only applies to {judge_flag} openai:URL, not to {shown!r}")
    judges = []
    for spec, name in zip(items, names):
        kwargs: dict = {}
        if name in ("llamaguard", "rubric") and name not in _EXTRA:
            kwargs = {"device": device, "dtype": dtype, "batch_size": batch_size, "trust_remote_code": trust_remote_code}
        elif name == "openai" and name not in _EXTRA:
            kwargs = {"prompt_format": judge_format or "rubric"}
        judges.append(get_judge(spec, **kwargs))
    ids = [j.id for j in judges]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise SafekeelError(f"{judge_flag}: judge {dup!r} is given twice")
    return judges
