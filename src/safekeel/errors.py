"""User-facing errors.

Anything the user can fix (a bad path, a bad flag value, empty input, mismatched tokenizers) raises
`SafekeelError`; the CLI prints its message on one line and exits with status 2, never a traceback.
"""


class SafekeelError(Exception):
    """An error caused by user input, reported as one clear line by the CLI."""
