"""serve_app's own extension into the core: `serve_app/runtimes/triton/request_extension.cc`.

Compiled against the installed core (its headers from the core sources, its library under the
hashed name the bindings use, so the process holds one core) and rebuilt whenever its source
changes: the install records the source's digest. `install --extension-only --core DIR` builds
it alone against a core installed otherwise (the NGC image's).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from serve_app.triton_install.core import compile_against_core
from serve_app.triton_layout import requests_extension_path

SOURCE = Path(__file__).resolve().parents[1] / "runtimes" / "triton" / "request_extension.cc"


def source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def build(core_include: Path, core_library: Path) -> None:
    """Compile the extension into the install root (replacing any older build at once)."""
    output = requests_extension_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_name(output.name + ".building")
    compile_against_core(
        SOURCE,
        core_include,
        core_library,
        staged,
        output.parent,
        "serve_app's Triton request extension",
    )
    staged.replace(output)
