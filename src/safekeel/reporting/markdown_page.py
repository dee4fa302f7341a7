"""The report's Markdown twin: the same blocks as the HTML page, images written as PNG files into a folder
next to it (`report_files/` for `report.md`) and linked; collapsed sections are `<details>`, which GitHub
and most viewers render."""

from __future__ import annotations

import re
from urllib.parse import quote

from safekeel.evaluation.report import render
from safekeel.reporting.blocks import Bullets, Details, Heading, Image, Markdown, Para, Pre, Sample, Table

_SPECIAL = re.compile(r"([\\`*<>|]|(?<!\w)_|_(?!\w)|\](?=\())")


def md_escape(text: str) -> str:
    """Plain text for Markdown, on one line: characters that would start markup are backslash-escaped
    (an underscore inside a word, or a bracket not followed by a link target, needs none)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def fenced(text: str) -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def shift_headings(text: str, shift: int) -> str:
    out, in_code = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        out.append("#" * shift + line if not in_code and re.match(r"^#{1,6}\s", line) else line)
    return "\n".join(out)


def render_block(block, files_dir: str, images: dict[str, bytes]) -> str:
    if isinstance(block, Heading):
        return "#" * max(1, min(6, block.level)) + " " + md_escape(block.text)
    if isinstance(block, Para):
        return md_escape(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {md_escape(x)}" for x in block.items)
    if isinstance(block, Table):
        cols = [md_escape(c) for c in block.columns]
        rows = [[md_escape(c) for c in r] for r in block.rows]
        text = render(cols, rows, "markdown").rstrip("\n")
        return (f"*{md_escape(block.caption)}*\n\n" if block.caption else "") + text
    if isinstance(block, Image):
        images[block.name] = block.png
        return f"![{md_escape(block.alt)}]({quote(files_dir)}/{quote(block.name)})"
    if isinstance(block, Pre):
        return fenced(block.text)
    if isinstance(block, Sample):
        return f"**{md_escape(block.title)}**\n\n{fenced(block.prompt)}\n\n{fenced(block.response)}"
    if isinstance(block, Markdown):
        return shift_headings(block.text.strip("\n"), block.shift)
    if isinstance(block, Details):
        from html import escape

        inner = "\n\n".join(render_block(b, files_dir, images) for b in block.blocks)
        return (f"<details{' open' if block.open else ''}><summary>{escape(' '.join(block.summary.split()))}"
                f"</summary>\n\n{inner}\n\n</details>")
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(blocks: list, files_dir: str) -> tuple[str, dict[str, bytes]]:
    """(Markdown text, {image file name: PNG bytes}); images are linked as `files_dir/NAME`."""
    images: dict[str, bytes] = {}
    text = "\n\n".join(render_block(b, files_dir, images) for b in blocks)
    return text + "\n", images
