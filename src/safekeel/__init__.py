"""safekeel: fine-tune language models while keeping their safety alignment (PACT)."""

__version__ = "0.1.0"

from safekeel.errors import SafekeelError

__all__ = ["SafekeelError", "__version__"]
