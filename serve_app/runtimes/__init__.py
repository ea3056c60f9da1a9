"""Runtimes behind the dataplane; `factory.start_runtime` picks one.

Kept import-free: the Triton Python-backend shim imports `runtimes.torchscript` inside
the stub process, which should not pay for loading the other runtimes.
"""
