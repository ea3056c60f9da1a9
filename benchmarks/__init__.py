"""Benchmarks for serve_app: `python -m benchmarks.run --help`."""
