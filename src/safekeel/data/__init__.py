"""Datasets: packaged harmful-prompt benchmarks, local files and generated tasks."""
