"""Regenerate the method table in docs/defences.md and docs/cli.md from the registry
(`safekeel methods --format markdown`); a test keeps both equal to it."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
table = subprocess.run(["safekeel", "methods", "--format", "markdown"], capture_output=True, text=True,
                       check=True).stdout
for name, indent in (("docs/defences.md", ""), ("docs/cli.md", "  ")):
    path = ROOT / name
    text = path.read_text()
    head = indent + "| method | what it does |"
    block = "".join(indent + line + "\n" for line in table.splitlines())
    if head in text:
        start = text.index(head)
        end = text.index("\n\n", start) + 1
        text = text[:start] + block + text[end:]
    elif name == "docs/cli.md":  # first time: after the "Inputs and support:" line
        marker = "  Inputs and support:\n\n"
        text = text.replace(marker, marker + block + "\n", 1)
    path.write_text(text)
    print(f"updated {name}")
