"""`safekeel report` in a real headless browser: the page opens and shows its tables and plots.

The report of a synthetic run directory and of a synthetic grid (tests/report_fixtures.py) is opened in
headless Chromium twice: `--dump-dom` on a copy of the page with a probe script appended, which writes
each image's natural size and on-page box and each table's box into attributes; and `--screenshot` of
the same page at the same window size. The screenshot is then checked with Pillow: it is not blank, the
plots' boxes hold many distinct colours (drawn curves, not an empty or broken image), and the models
table's box holds dark text pixels.

Chromium comes from the OS packages (`apt-get install chromium`); without a chromium binary on PATH (or
in SAFEKEEL_CHROMIUM) the tests are skipped. Marked `browser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_fixtures import write_grid_dir, write_runs_dir

from safekeel.reporting import build_report

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
WIDTH, HEIGHT = 1280, 3000

PROBE = """<script>
window.addEventListener('load', function () {
  function box(el) { var r = el.getBoundingClientRect();
    return [Math.round(r.left + window.scrollX), Math.round(r.top + window.scrollY), Math.round(r.width),
            Math.round(r.height)].join(','); }
  document.querySelectorAll('img').forEach(function (img) {
    img.setAttribute('data-natural', img.naturalWidth + 'x' + img.naturalHeight);
    img.setAttribute('data-box', box(img)); });
  document.querySelectorAll('table').forEach(function (t) {
    t.setAttribute('data-box', box(t)); t.setAttribute('data-rows', t.rows.length); });
  document.body.setAttribute('data-probed', 'yes');
});
</script>"""


def _browser() -> str | None:
    env = os.environ.get("SAFEKEEL_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


BROWSER = _browser()
if BROWSER is None:
    pytest.skip(f"SAFEKEEL_CHROMIUM={os.environ['SAFEKEEL_CHROMIUM']} is no executable" if
                os.environ.get("SAFEKEEL_CHROMIUM") else
                "no chromium binary on PATH (apt-get install chromium, or set SAFEKEEL_CHROMIUM)", allow_module_level=True)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--mute-audio", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
           f"--window-size={WIDTH},{HEIGHT}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[dict] = []
        self.tables: list[dict] = []
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        elif tag == "table":
            self.tables.append(attrs)
        elif tag == "body":
            self.body = attrs


def _box(attrs: dict) -> tuple[int, int, int, int]:
    left, top, width, height = (int(x) for x in attrs["data-box"].split(","))
    return left, top, width, height


def render(tmp_path: Path, report: Path) -> tuple[_Elements, object]:
    """(the rendered DOM's elements with their probed sizes, the screenshot as a Pillow RGB image)."""
    from PIL import Image

    probe = report.with_name("probe.html")
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    url = probe.resolve().as_uri()
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", url).stdout
    shot = tmp_path / f"{report.parent.name}.png"
    _chromium(tmp_path, f"--screenshot={shot}", url)
    elements = _Elements()
    elements.feed(dom)
    assert elements.body.get("data-probed") == "yes", "the page's load event never ran"
    return elements, Image.open(shot).convert("RGB")


def colours(image, box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """(distinct colours, saturated pixels (a plotted colour, not grey), dark pixels) in `box`, clipped to the image."""
    left, top, width, height = box
    region = image.crop((max(0, left), max(0, top), min(image.width, left + width), min(image.height, top + height)))
    pixels = list(region.getdata())
    saturated = sum(max(p) - min(p) > 90 for p in pixels)
    dark = sum(sum(p) < 200 for p in pixels)
    return len(set(pixels)), saturated, dark


def check_not_blank(image) -> None:
    assert image.size == (WIDTH, HEIGHT)
    n_colours, _, dark = colours(image, (0, 0, image.width, image.height))
    assert n_colours > 100, f"the screenshot is (nearly) blank: {n_colours} colours"
    assert dark > 2000, "no text drawn"


def check_plot(image, img: dict) -> None:
    natural = [int(x) for x in img["data-natural"].split("x")]
    assert natural[0] > 100 and natural[1] > 100, f"image {img.get('data-name')} did not decode: {natural}"
    box = _box(img)
    assert box[2] > 100 and box[3] > 100, f"image {img.get('data-name')} is not shown: {box}"
    assert box[1] + box[3] <= HEIGHT, f"image {img.get('data-name')} lies below the screenshot: {box}"
    n_colours, saturated, _ = colours(image, box)
    assert n_colours > 40, f"{img.get('data-name')}: only {n_colours} colours where the plot sits"
    assert saturated > 200, f"{img.get('data-name')}: no coloured curves where the plot sits"


def test_run_report_opens_and_shows_tables_and_plots(tmp_path):
    paths = build_report(write_runs_dir(tmp_path / "runs"))
    elements, image = render(tmp_path, paths.html)
    check_not_blank(image)
    names = [img.get("data-name") for img in elements.imgs]
    assert names == ["curves-pact-a.png", "monitor-pact-a.png"]
    for img in elements.imgs:  # both open (one trained model): visible and drawn
        check_plot(image, img)
    models, agreement = elements.tables[0], elements.tables[1]
    assert int(models["data-rows"]) == 4 and int(agreement["data-rows"]) == 2  # header + rows
    _, _, width, height = _box(models)
    assert width > 600 and height > 60
    assert colours(image, _box(models))[2] > 500, "the models table shows no text"


def test_grid_report_opens_and_shows_tables_md_pareto_and_cells(tmp_path):
    paths = build_report(write_grid_dir(tmp_path / "grid"))
    elements, image = render(tmp_path, paths.html)
    check_not_blank(image)
    by_name = {img.get("data-name"): img for img in elements.imgs}
    assert {"pareto-grid.png", "overview-grid.png"} <= set(by_name)
    check_plot(image, by_name["pareto-grid.png"])
    check_plot(image, by_name["overview-grid.png"])
    for name, img in by_name.items():  # cells are collapsed, but their plots are decoded too
        assert min(int(x) for x in img["data-natural"].split("x")) > 100, name
    tables_md = elements.tables[0]  # tables.md's table comes first
    assert int(tables_md["data-rows"]) == 3 and _box(tables_md)[3] > 40
    assert colours(image, _box(tables_md))[2] > 200, "tables.md's table shows no text"
