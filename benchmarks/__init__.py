"""Side-by-side benchmarks of weight normalization; run `python -m benchmarks.run --help`."""
