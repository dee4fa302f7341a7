"""The report as one self-contained HTML page: inline CSS, images embedded as base64 PNG data URIs, no
script, font or stylesheet from anywhere else; collapsed sections are `<details>`. Every piece of text
from the scanned files (labels, prompts, answers, tables.md) is escaped with `html.escape`."""

from __future__ import annotations

import base64
import re
from html import escape

from safekeel.reporting.blocks import Bullets, Details, Heading, Image, Markdown, Para, Pre, Sample, Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #1b1b1b; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #eee; }
h3 { font-size: 1.1em; } h4 { font-size: 1em; margin: 1em 0 .4em; }
.scroll { overflow-x: auto; margin: .6em 0; }
table { border-collapse: collapse; font-size: .9em; }
caption { text-align: left; font-weight: 600; padding: .2em 0; }
th, td { border: 1px solid #ccc; padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; margin: .4em 0; display: block; }
pre { background: #f6f8fa; padding: .6em; white-space: pre-wrap; word-break: break-word; font-size: .9em; }
details { border: 1px solid #ddd; border-radius: 4px; padding: .3em .8em; margin: .5em 0; }
summary { cursor: pointer; font-weight: 600; }
.sample { border-left: 3px solid #bbb; padding-left: .7em; margin: .7em 0; }
.sample .meta { font-size: .85em; color: #555; }
.sample .prompt { font-weight: 500; white-space: pre-wrap; margin: .2em 0; }
code { background: #f0f0f0; padding: 0 .2em; }
"""

_NUMERIC = re.compile(r"^[-+]?\d")
_BULLET = re.compile(r"^\s*[-*]\s+")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(columns: list[str], rows: list[list[str]], caption: str = "") -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="num">{escape(c)}</td>' if _NUMERIC.match(c) else
                                    f"<td>{escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>'


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` and **bold** spans."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escape(part)))
    return "".join(out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    line = line.removeprefix("|")
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def markdown_to_html(text: str, shift: int = 0) -> str:
    """Enough Markdown for a generated tables file: headings, pipe tables, bullet lists, fenced code and
    paragraphs (inline `code` and **bold**); anything else is shown as escaped text."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.lstrip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith("```"):
                j += 1
            out.append(f"<pre>{escape(chr(10).join(lines[i + 1:j]))}</pre>")
            i = j + 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            level = min(6, len(m.group(1)) + shift)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            block = [_cells(x) for x in lines[i:j]]
            if len(block) > 1 and all(re.fullmatch(r":?-+:?", c) for c in block[1] if c):
                block.pop(1)
            head = "".join(f"<th>{_inline(c)}</th>" for c in block[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>\n" for row in block[1:])
            out.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>')
            i = j
        elif _BULLET.match(line):
            items = []
            while i < len(lines) and _BULLET.match(lines[i]):
                items.append(f"<li>{_inline(_BULLET.sub('', lines[i]))}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#{1,6}\s|\s*\||\s*```|\s*[-*]\s)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            if not para:  # a line no rule above took: show it as it is
                para, i = [line.strip()], i + 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def render_block(block) -> str:
    if isinstance(block, Heading):
        level = max(1, min(6, block.level))
        return f"<h{level}>{escape(block.text)}</h{level}>"
    if isinstance(block, Para):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{escape(x)}</li>" for x in block.items) + "</ul>"
    if isinstance(block, Table):
        return _table(block.columns, block.rows, block.caption)
    if isinstance(block, Image):
        return (f'<figure><img src="{data_uri(block.png)}" alt="{escape(block.alt)}" '
                f'data-name="{escape(block.name)}"></figure>')
    if isinstance(block, Pre):
        return f"<pre>{escape(block.text)}</pre>"
    if isinstance(block, Sample):
        return (f'<div class="sample"><div class="meta">{escape(block.title)}</div>'
                f'<div class="prompt">{escape(block.prompt)}</div><pre>{escape(block.response)}</pre></div>')
    if isinstance(block, Markdown):
        return markdown_to_html(block.text, block.shift)
    if isinstance(block, Details):
        inner = "\n".join(render_block(b) for b in block.blocks)
        return f"<details{' open' if block.open else ''}><summary>{escape(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(blocks: list, title: str) -> str:
    body = "\n".join(render_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
