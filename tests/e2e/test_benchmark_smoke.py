"""`python -m benchmarks.run --smoke`: the benchmark runs end to end and reports every contender.

Seconds-long points on the tiny model, all Ray contenders in one `serve run` (~50 s). No
timing assertions: only that each contender produced rows (or, for the Triton runtime, a
row or a note saying why it was skipped) and that requests succeeded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"),
]


def test_benchmark_smoke_reports_every_contender(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    by_contender: dict[str, list[dict]] = {}
    for row in rows:
        by_contender.setdefault(row["contender"], []).append(row)

    for contender in ("serve_app", "plain Ray Serve", "no-op Ray Serve", "wrk ceiling"):
        assert by_contender.get(contender), f"no rows for {contender}: {results['notes']}"
    assert {r["codec"] for r in by_contender["serve_app"]} == {"binary", "json"}
    assert by_contender.get("serve_app triton") or any("triton" in n for n in results["notes"])
    assert results["inprocess_limit"]["tiny"]["batch64"]["samples_per_s"] > 0
    for row in rows:
        assert row["requests"] > 0 and row["errors"] == 0, row

    table = (tmp_path / "results.md").read_text()
    for contender in by_contender:
        assert f"| {contender} " in table
    assert "in-process limit" in table
