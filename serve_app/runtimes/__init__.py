"""Runtimes behind the dataplane; `factory.start_runtime` picks one."""
