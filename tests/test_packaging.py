"""Packaging: `python -m safekeel`, LICENSE, CITATION.cff, pyproject metadata, and packaged downloads
with byte progress (a local HTTP server stands in for the package index: nothing leaves the machine)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from safekeel import wheels
from safekeel.errors import SafekeelError
from safekeel.wheels import WheelPart

ROOT = Path(__file__).resolve().parents[1]


# ---- python -m safekeel, LICENSE, CITATION.cff, pyproject ----------------------------------------

def test_python_m_safekeel_is_the_cli():
    proc = subprocess.run([sys.executable, "-m", "safekeel", "--help"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: safekeel") and "train" in proc.stdout and "eval" in proc.stdout


def test_license_is_the_full_apache_text_and_pyproject_says_so():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and "END OF TERMS AND CONDITIONS" in text
    assert all(f"   {n}. " in text for n in range(1, 10))  # all nine sections
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


def test_citation_cff_cites_safekeel_and_the_pact_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "Apache-2.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(cff["version"]) == project["version"] and cff["authors"]
    pact = next(r for r in cff["references"] if "Few Tokens, Big Leverage" in r["title"])
    assert pact["url"] == "https://arxiv.org/abs/2603.07445"
    assert [a["family-names"] for a in pact["authors"]] == ["Wang", "Shi", "Ouyang", "Wang"]


def test_declared_dependencies_are_used():
    """Every runtime dependency is imported by src/safekeel or carries a comment saying why it is needed."""
    text = (ROOT / "pyproject.toml").read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    src = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src" / "safekeel").rglob("*.py"))
    modules = {"pyyaml": "yaml", "huggingface_hub": "huggingface_hub"}
    for dep in deps:
        name = dep.split(">")[0].split("=")[0].split("[")[0].strip()
        module = modules.get(name, name.replace("-", "_"))
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f'"{dep}"'))
        imported = f"import {module}" in src or f"from {module}" in src
        assert imported or "not imported:" in line, f"{name} is neither imported nor explained"


# ---- downloads: a local index -----------------------------------------------------------------------

WHEEL = b"PK-fake-wheel-" * 200_000  # ~2.7 MB: several chunks
NAME = "fake_pkg-1.0-py3-none-any.whl"


class _Index(http.server.BaseHTTPRequestHandler):
    """/simple/fake-pkg/ (PEP 691 JSON) and /files/<wheel>; `server.cut` sends half the body."""

    def do_GET(self):  # http.server's name for it
        srv = self.server
        srv.hits.append(self.path)
        if self.path == "/simple/fake-pkg/":
            files = [{"filename": NAME, "url": f"../../files/{NAME}", "hashes": {"sha256": srv.sha}},
                     {"filename": "fake_pkg-1.0.tar.gz", "url": "x", "hashes": {}}]
            self._send(json.dumps({"meta": {"api-version": "1.0"}, "name": "fake-pkg", "files": files}).encode(),
                       "application/vnd.pypi.simple.v1+json")
        elif self.path == f"/files/{NAME}":
            self._send(WHEEL, "application/octet-stream", cut=srv.cut)
        else:
            self.send_error(404)

    def _send(self, body: bytes, kind: str, cut: bool = False):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def index(monkeypatch, real_download_wheel):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    server.hits, server.cut, server.sha = [], False, hashlib.sha256(WHEEL).hexdigest()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for var in ("http_proxy", "HTTP_PROXY", "SAFEKEEL_WHEELHOUSE", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(wheels, "download_wheel", real_download_wheel)  # the suite's guard, lifted here only

    def no_pip(*a, **k):
        raise AssertionError("pip was called")

    monkeypatch.setattr(wheels, "_pip_download", no_pip)
    yield server
    server.shutdown()
    server.server_close()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_download_streams_with_a_byte_progress_bar_on_a_terminal(index, tmp_path, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    part = WheelPart("fake-pkg", "1.0", "", hashlib.sha256(WHEEL).hexdigest())
    wheel = wheels.fetch_wheel(part, tmp_path / "d", "fake")
    assert wheel == tmp_path / "d" / NAME and wheel.read_bytes() == WHEEL
    assert [p.name for p in wheel.parent.iterdir()] == [NAME]  # no .part file left
    out = term.getvalue()
    assert "/2.67M" in out and "B/s" in out  # bytes, scaled (MiB), total from Content-Length
    assert index.hits == ["/simple/fake-pkg/", f"/files/{NAME}"]


def test_download_is_quiet_off_a_terminal_or_when_asked(index, tmp_path, monkeypatch):
    plain = io.StringIO()  # not a terminal: a log file, CI
    monkeypatch.setattr(sys, "stderr", plain)
    wheels.fetch_wheel(WheelPart("fake-pkg", "1.0", ""), tmp_path / "a", "fake")
    assert plain.getvalue() == ""
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    wheels.fetch_wheel(WheelPart("fake-pkg", "1.0", ""), tmp_path / "b", "fake", progress=False)
    assert term.getvalue() == ""


def test_a_wrong_index_hash_is_an_error_not_a_retry(index, tmp_path):
    index.sha = "0" * 64
    with pytest.raises(SafekeelError, match="the index says 0000"):
        wheels.fetch_wheel(WheelPart("fake-pkg", "1.0", ""), tmp_path / "d", "fake", progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_a_cut_connection_or_missing_package_falls_back_to_pip(index, tmp_path, monkeypatch):
    calls = []

    def pip(package, version, dest):
        calls.append(package)
        (dest / NAME).write_bytes(WHEEL)
        return dest / NAME

    monkeypatch.setattr(wheels, "_pip_download", pip)
    index.cut = True
    assert wheels.fetch_wheel(WheelPart("fake-pkg", "1.0", ""), tmp_path / "a", "fake", progress=False).is_file()
    assert calls == ["fake-pkg"] and not list((tmp_path / "a").glob("*.part"))
    index.cut = False
    wheels.fetch_wheel(WheelPart("other-pkg", "2.0", ""), tmp_path / "b", "fake", progress=False)  # 404
    assert calls == ["fake-pkg", "other-pkg"]


def test_the_wheelhouse_is_used_before_any_network(index, tmp_path, monkeypatch):
    house = tmp_path / "house"
    house.mkdir()
    (house / NAME).write_bytes(b"local copy")
    (house / "fake_pkg-1.1-py3-none-any.whl").write_bytes(b"another version")
    monkeypatch.setenv("SAFEKEEL_WHEELHOUSE", str(house))
    wheel = wheels.fetch_wheel(WheelPart("fake-pkg", "1.0", ""), tmp_path / "d", "fake")
    assert wheel.read_bytes() == b"local copy" and index.hits == []


def test_cache_lock_is_a_filelock(tmp_path):
    from filelock import FileLock, Timeout

    target = tmp_path / "models" / "m.gguf"
    with wheels.cache_lock(target), pytest.raises(Timeout):
        FileLock(str(target.parent / "m.gguf.lock")).acquire(timeout=0)
    with FileLock(str(target.parent / "m.gguf.lock")).acquire(timeout=0):
        pass  # released on exit
