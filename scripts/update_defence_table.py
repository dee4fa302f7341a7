"""Regenerate the method table in docs/defences.md from the registry (`safekeel methods --format markdown`)."""
import subprocess
from pathlib import Path

p = Path("docs/defences.md")
s = p.read_text()
table = subprocess.run(["safekeel", "methods", "--format", "markdown"], capture_output=True, text=True, check=True).stdout
start = s.index("| method | what it does |")
end = s.index("\n\n", start) + 1
p.write_text(s[:start] + table + s[end:])
