"""The answer generators evaluation uses, defined in `safekeel.generators` (where the model judges can use
them too) and importable from here as well."""

from safekeel.generators import HFGenerator, LazyGenerator, VLLMGenerator

__all__ = ["HFGenerator", "LazyGenerator", "VLLMGenerator"]
