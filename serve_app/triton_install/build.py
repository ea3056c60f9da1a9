"""What every build step shares: its error type, running a command, and locating sources."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path


class InstallError(RuntimeError):
    """An install step failed; the message says what to do about it."""


def run(command: Sequence[str], what: str) -> None:
    """Run a build command, turning its failure into an InstallError with its output."""
    result = subprocess.run(list(command), capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise InstallError(f"{what} failed ({' '.join(command)}):\n{output}")


def run_all(commands: Sequence[tuple[Sequence[str], str]]) -> None:
    """Run independent commands (compiler jobs) on every core; the first failure is raised."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for future in [pool.submit(run, command, what) for command, what in commands]:
            future.result()


def require_tool(name: str, hint: str) -> None:
    if shutil.which(name) is None:
        raise InstallError(f"{name} is required: {hint}")


@contextmanager
def source_tree(env_var: str, marker: Path, clones: dict[str, str], branch: str) -> Iterator[Path]:
    """Yield a directory holding `marker`: from `$env_var` (a directory or archive) or git.

    `clones` maps sub-directory → git URL, cloned at `branch` when the variable is unset;
    machines without GitHub access set the variable to a local copy (CI: ../shared/vendor).
    """
    given = os.environ.get(env_var)
    with tempfile.TemporaryDirectory(prefix="serve-app-src-") as scratch:
        base = Path(scratch)
        if given and Path(given).is_dir():
            base = Path(given)
        elif given:
            try:
                shutil.unpack_archive(given, scratch)
            except (OSError, ValueError, shutil.ReadError) as error:
                raise InstallError(f"{env_var}={given} is not a directory or archive: {error}") from error
        else:
            require_tool("git", f"it fetches the sources (or set {env_var} to a local copy)")
            for directory, url in clones.items():
                run(
                    ["git", "clone", "--depth", "1", "-b", branch, url, str(base / directory)],
                    f"git clone {url}",
                )
        candidates = [base, *(entry for entry in base.iterdir() if entry.is_dir())]
        source = next((c for c in candidates if (c / marker).is_file()), None)
        if source is None:
            where = given or ", ".join(clones.values())
            raise InstallError(f"no {marker} in {where} (set {env_var} to the {branch} sources)")
        print(f"using sources from {given or ', '.join(f'{u}@{branch}' for u in clones.values())}")
        yield source
