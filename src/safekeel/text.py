"""Text normalisation shared by dedupe, overlap checks and answer grading."""

from __future__ import annotations

import re


def normalise_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the form used for dedupe and overlap checks."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def prompt_bucket(text: str, buckets: int) -> int:
    """A fixed bucket in [0, buckets) for `text`: the sha256 of its normalised form (UTF-8), first 8 bytes
    read as a big-endian integer, modulo `buckets`. Same on every machine, Python and safekeel version
    (as long as `normalise_text` is unchanged), so splits made with it never move: generated tasks'
    train/test (`tasks.base.GeneratedTask.split_of`) and StrongREJECT's held-out part
    (`data.prompts.strongreject_part`)."""
    import hashlib

    digest = hashlib.sha256(normalise_text(text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


DIGEST_HEX = 16  # 64 bits: a collision among a few thousand prompts has odds of about 1e-12


class PromptDigest(str):
    """A prompt known only by its digest (`prompt_digest`): what a tokens artifact or a training run records
    of the prompts it was fitted on, so an overlap check (`data.records.check_overlap`) works without the text."""


def prompt_digest(text: str) -> str:
    """The first DIGEST_HEX hex digits of the sha256 of the normalised text (UTF-8): two spellings of one
    prompt (case, punctuation, spacing) get one digest, as they compare equal in the overlap checks."""
    import hashlib

    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:DIGEST_HEX]
