"""Runtimes behind the dataplane (`base.Runtime`), a package per family (`torch/`, `triton/`);
`factory.start_runtime` picks one."""
