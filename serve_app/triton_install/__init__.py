"""Installs in-process Triton into the active environment: `python -m serve_app.triton_install install`.

NVIDIA ships the `tritonserver` package only inside its containers. This installer takes the
Triton 2.51 core and python backend from the PyPI wheel `nvidia-pytriton==0.7.0`, compiles the
r24.10 pybind11 bindings against that core (`core.py`) and Triton's own PyTorch backend against
the torch installed here (`pytorch_backend.py`). Build-time only: the runtime reads the result
through `serve_app.triton_layout`.
"""
