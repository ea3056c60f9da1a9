"""What importing the package costs: the app module and the Triton runtime import no torch, which
`serve run`'s driver and every Triton replica would otherwise load for nothing."""

from __future__ import annotations

import subprocess
import sys

LIGHT_MODULES = (
    "serve_app.app",
    "serve_app.preflight",
    "serve_app.runtimes.factory",
    "serve_app.runtimes.triton.runtime",
)


def test_the_app_and_the_triton_runtime_import_no_torch() -> None:
    code = f"import sys\nfor name in {LIGHT_MODULES!r}:\n    __import__(name)\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
