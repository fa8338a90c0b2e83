"""Speed benchmarks of keras_sit: `python -m benchmarks.benchmark --help` from the repository root."""
