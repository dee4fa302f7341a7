"""Text normalisation shared by dedupe, overlap checks and answer grading."""

from __future__ import annotations

import re


def normalise_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the form used for dedupe and overlap checks."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()
