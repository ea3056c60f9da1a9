"""Helpers the tests and the benchmarks share; not part of the serve_app package (nor its wheel)."""
