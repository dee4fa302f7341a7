"""safekeel: fine-tune language models while keeping their safety alignment (PACT).

The Python API (README, "Python API"; `safekeel.api`): `identify_tokens`, `load_tokens`, `train`,
`evaluate_safety`, `evaluate_task`, `gate`, `compare`, plus `SafekeelError`. The names load on
first use, so `import safekeel` stays fast (no torch or transformers until a function is called).
"""

__version__ = "0.1.0"

from safekeel.errors import SafekeelError

# the public names, all from `safekeel.api` (imported on first access, PEP 562). The package root is the
# lowest layer (every module imports its __version__), so this is its one upward edge, allowed only here
# and only on attribute access (tests/test_import_layers.py)
_API = "safekeel.api"
_LAZY = dict.fromkeys(("identify_tokens", "load_tokens", "train", "evaluate_safety", "evaluate_task", "gate",
                       "compare", "SafetyTokens", "TrainResult"), _API)

__all__ = ["SafekeelError", "SafetyTokens", "TrainResult", "__version__", "compare", "evaluate_safety",
           "evaluate_task", "gate", "identify_tokens", "load_tokens", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'safekeel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
