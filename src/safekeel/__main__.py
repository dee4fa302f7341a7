"""`python -m safekeel ...`: the same CLI as the `safekeel` command, for environments whose scripts
folder is not on PATH (a venv not activated, `pipx run`, a job scheduler given only an interpreter)."""

import sys

from safekeel.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
