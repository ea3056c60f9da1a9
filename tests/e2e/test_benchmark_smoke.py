"""`python -m benchmarks.run --smoke`: the benchmark runs end to end and reports every contender;
`python -m benchmarks.placement --smoke` too (the placement benchmark, tiny models, ~40 s).

Seconds-long points on the tiny model, all Ray contenders in one `serve run`, standalone Triton
beside them (~60 s). No timing assertions: only that every contender produced rows with no
failed request, that nothing failed, and that the report shows them all, the gRPC rows of the
contenders serving Triton's gRPC API too (perf_analyzer -i grpc; skipped, and said so, only
where perf_analyzer cannot run). The Triton-based contenders (serve_app triton, standalone
Triton) may be skipped only where Triton is not installed (`python -m serve_app.triton_install
install`); once it is, their failure fails this test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import placement
from benchmarks.contenders import GRPC_CONTENDERS, TRITON_BASED
from benchmarks.loadgen import GRPC_CODEC
from benchmarks.settings import PRESETS
from serve_app import triton_layout

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"),
]


def run_smoke(module: str, out: Path, timeout_s: float) -> tuple[subprocess.CompletedProcess[str], str]:
    """`python -m <module> --smoke --out <out>`: the process, and its output's last lines."""
    completed = subprocess.run(
        [sys.executable, "-m", module, "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return completed, completed.stdout[-4000:] + completed.stderr[-4000:]


def test_benchmark_smoke_reports_every_contender(tmp_path: Path) -> None:
    completed, output = run_smoke("benchmarks.run", tmp_path, timeout_s=300)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["failures"] == [], output
    assert completed.returncode == 0, output

    by_contender: dict[str, list[dict]] = {}
    for row in results["rows"]:
        by_contender.setdefault(row["contender"], []).append(row)
    skipped = {s["contender"]: s["why"] for s in results["skipped"]}
    triton_installed = triton_layout.backend_directory() is not None
    expected = [*PRESETS["smoke"]["contenders"].split(","), "wrk ceiling"]
    assert "standalone Triton" in expected
    for contender in expected:
        if contender in TRITON_BASED and contender in skipped and not triton_installed:
            continue  # no Triton on this machine: the run said so
        assert contender not in skipped, f"{contender} skipped: {skipped[contender]}"
        assert by_contender.get(contender), f"no rows for {contender}: {results['notes']}"
    grpc = "grpc" in results["settings"]["protocols"]
    assert grpc or any(s.startswith("gRPC rows") for s in skipped), results["skipped"]
    for contender in GRPC_CONTENDERS:
        if by_contender.get(contender):
            codecs = {(r["protocol"], r["codec"]) for r in by_contender[contender]}
            expect = {("http", "binary"), ("http", "json"), *([("grpc", GRPC_CODEC)] if grpc else [])}
            assert codecs == expect, contender
    assert results["inprocess_limit"]["tiny"]["batch64"]["samples_per_s"] > 0
    for row in results["rows"]:
        assert row["requests"] > 0 and row["errors"] == 0, row
    if by_contender.get("standalone Triton"):
        assert results["settings"]["allotments"]["standalone Triton"].startswith("CPUs ")
        assert any(r.get("x_triton") for r in by_contender["serve_app"])

    table = (tmp_path / "results.md").read_text()
    for contender in by_contender:
        assert f"| {contender} " in table
    assert "in-process limit" in table and "xtriton" in table
    if grpc:
        assert "| gRPC req/s | HTTP binary req/s | gRPC/HTTP |" in table


def test_placement_benchmark_smoke_reports_every_contender(tmp_path: Path) -> None:
    """Every contender of the smoke preset served the Zipf load with no failed request, hits and
    misses both seen (more models than the replicas hold), and each model's requests went to one
    replica under HAProxy's hash."""
    completed, output = run_smoke("benchmarks.placement", tmp_path, timeout_s=240)
    assert completed.returncode == 0, output
    results = json.loads((tmp_path / "placement.json").read_text())
    rows = {row["contender"]: row for row in results["rows"]}
    assert set(rows) == set(placement.PRESETS["smoke"]["contenders"].split(",")), output
    for name, row in rows.items():
        assert row["requests"] > 0 and row["failed"] == 0, (name, row["failures"])
        assert 0 < row["hit_ratio"] < 1 and row["loads"] > 0, (name, row)
        assert 0 < row["oracle_hit_ratio"] <= 1, (name, row)
    ring = rows[placement.ON_DEMAND]["ring"]
    assert ring["unmapped"] == [], ring
    table = (tmp_path / "placement.md").read_text()
    for name in rows:
        assert f"| {name} |" in table
    assert "hit ratio ≥ 0.9x oracle" in table
