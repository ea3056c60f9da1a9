"""serve_app's own extension into the core: `serve_app/runtimes/triton_requests.cc`.

Compiled against the installed core (its headers from the core sources, its library under the
hashed name the bindings use, so the process holds one core) and rebuilt whenever its source
changes: the install records the source's digest.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import time
from pathlib import Path

from serve_app.triton_install.build import run
from serve_app.triton_layout import LIBS, install_root, requests_extension_path

SOURCE = Path(__file__).resolve().parents[1] / "runtimes" / "triton_requests.cc"


def source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def build(core_source: Path, core_library: str) -> None:
    """Compile the extension into the install root (replacing any older build at once)."""
    import pybind11

    output = requests_extension_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_name(output.name + ".building")
    rpath = "$ORIGIN/" + os.path.relpath(install_root() / LIBS, output.parent)
    started = time.monotonic()
    run(
        [
            "g++", "-O2", "-shared", "-fPIC", "-std=c++17", "-fvisibility=hidden",
            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
            f"-I{core_source / 'include'}", str(SOURCE), "-o", str(staged),
            f"-L{install_root() / LIBS}", f"-l:{core_library}", f"-Wl,--disable-new-dtags,-rpath,{rpath}",
        ],
        "compiling serve_app's Triton request extension",
    )  # fmt: skip
    staged.replace(output)
    print(f"compiled {output.name} in {time.monotonic() - started:.0f} s")
