"""serve_app: Triton's HTTP API for a TorchScript model repository on Ray Serve.

The Serve entry point is `serve_app.app:build_app`; its arguments are `AppArgs`.
"""

from serve_app.config import AppArgs, TritonOptions

__version__ = "0.1.0"

__all__ = ["AppArgs", "TritonOptions", "__version__"]
