"""`safekeel report DIR`: one self-contained HTML page and its Markdown twin about a run, a directory of
runs, or an experiment grid (docs/report.md).

`collect.scan` finds what DIR holds, `content.build` turns it into blocks (tables, plots, collapsed
sample answers), `html_page` and `markdown_page` write them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReportPaths:
    html: Path
    markdown: Path
    files_dir: Path
    images: int


def _write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def output_paths(root: str | Path, output: str | Path | None = None) -> tuple[Path, Path, Path]:
    """(HTML file, Markdown file, the Markdown's image folder): DIR/report.html, DIR/report.md and
    DIR/report_files/ by default; `output` names the HTML file, the others sit next to it."""
    html = Path(output).expanduser() if output else Path(root) / "report.html"
    return html, html.with_suffix(".md"), html.with_name(f"{html.stem}_files")


def build_report(root: str | Path, output: str | Path | None = None, *, samples: int = 3,
                 title: str | None = None) -> ReportPaths:
    """Scan `root`, write the HTML page and the Markdown twin (with its PNGs); return where."""
    from safekeel.io_utils import atomic_write_text
    from safekeel.reporting.collect import scan
    from safekeel.reporting.content import build
    from safekeel.reporting.html_page import render_html
    from safekeel.reporting.markdown_page import render_markdown

    html_path, md_path, files_dir = output_paths(root, output)
    result = scan(root)
    blocks = build(result, samples=samples, title=title)
    title = blocks[0].text
    text, images = render_markdown(blocks, files_dir.name)
    if images:
        files_dir.mkdir(parents=True, exist_ok=True)
    for old in files_dir.glob("*.png") if files_dir.is_dir() else []:  # images of an earlier report that this one no longer has
        if old.name not in images:
            old.unlink()
    for name, png in images.items():
        _write_bytes(files_dir / name, png)
    atomic_write_text(md_path, text)
    atomic_write_text(html_path, render_html(blocks, title))
    return ReportPaths(html_path, md_path, files_dir, len(images))
