"""Command-line interface: a thin layer of argument parsing over typed library functions."""
