"""The report as a list of blocks, built once (`content.py`) and written twice: HTML (`html_page.py`)
and Markdown (`markdown_page.py`). Text in blocks is plain text; each writer escapes it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    name: str  # file name in the Markdown twin's folder, unique in the report
    png: bytes
    alt: str


@dataclass
class Pre:
    text: str


@dataclass
class Sample:
    title: str
    prompt: str
    response: str


@dataclass
class Markdown:
    """Markdown written by another tool (a grid's tables.md), its headings moved `shift` levels down."""
    text: str
    shift: int = 2


@dataclass
class Details:
    summary: str
    blocks: list = field(default_factory=list)
    open: bool = False


def clip(text: str, limit: int = 1200) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" … ({len(text) - limit} more characters)"
