"""What one benchmark invocation measured, and its results.json form (what benchmarks.report reads)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadResult


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def preset_parser(module: str, description: str | None, quick: str, smoke: str) -> argparse.ArgumentParser:
    """A benchmark command's parser with its two presets, --quick and --smoke (one at a time)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help=quick)
    preset.add_argument("--smoke", action="store_true", help=smoke)
    return parser


def report_arguments(
    module: str, description: str | None, results_help: str, write_help: str, argv: list[str] | None
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """A report command's arguments (a results file to render again, --write) and the file's data."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("results", type=Path, help=results_help)
    parser.add_argument("--write", action="store_true", help=write_help)
    args = parser.parse_args(argv)
    return args, json.loads(args.results.read_text())


def write_files(out: Path, stem: str, data: dict[str, Any], text: str, indent: int | None = None) -> None:
    """<stem>.json (compact unless `indent`) and <stem>.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    separators = None if indent else (",", ":")
    (out / f"{stem}.json").write_text(
        json.dumps(data, indent=indent, separators=separators, default=str) + "\n"
    )
    (out / f"{stem}.md").write_text(text + "\n")


class Run:
    """Everything measured in one invocation; `data()` is results.json."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        # Contenders that failed (did not start, a check or a point failed) or were skipped (cannot run
        # here, e.g. Triton not installed): {"contender", "mode", "why"}.
        self.failures: list[dict[str, str]] = []
        self.skipped: list[dict[str, str]] = []
        self.limits: dict[str, dict[str, Any]] = {}  # per model: the best of limit_samples
        self.limit_samples: dict[str, list[dict[str, Any]]] = {}
        self.ceiling: list[dict[str, Any]] = []
        self.transport: list[dict[str, Any]] = []
        self.startup: list[dict[str, Any]] = []
        self.request_path: list[dict[str, Any]] = []
        self.allotments: dict[str, str] = {}  # contender -> the CPUs/threads it was given
        self.started = datetime.datetime.now().isoformat(timespec="seconds")
        self.load_before = loadavg()

    def add(
        self, contender: str, mode: str, model: str, codec: str, result: LoadResult, replicas: Any = None
    ) -> None:
        extra: dict[str, Any] = {"load1": loadavg()[0]}
        if replicas is not None:
            extra["replicas"] = replicas()
        row = {
            "contender": contender,
            "mode": mode,
            "model": model,
            "codec": codec,
            **result.as_dict(),
            **extra,
        }
        self.rows.append(row)
        log(
            f"{contender:<26} {mode:<16} {model:<8} {codec:<6} c={result.concurrency:<3} "
            f"{result.throughput:9.1f} req/s  p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms"
            + (f"  errors {result.error_detail}" if result.errors else "")
            + (f"  replicas {extra['replicas']}" if "replicas" in extra else "")
            + f"  load {extra['load1']}  [{result.loadgen}]"
        )

    def note(self, message: str) -> None:
        self.notes.append(message)
        log(f"NOTE: {message}")

    def fail(self, contender: str, mode: str, why: str) -> None:
        """A contender that should have been measured and was not (fully)."""
        self.failures.append({"contender": contender, "mode": mode, "why": why})
        self.note(f"{contender} [{mode}] FAILED: {why}")

    def skip(self, contender: str, why: str) -> None:
        """A contender this machine cannot run at all."""
        self.skipped.append({"contender": contender, "why": why})
        self.note(f"{contender} skipped: {why}")

    def data(self) -> dict[str, Any]:
        import ray
        import torch

        args = self.args
        return {
            "started": self.started,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "ray": ray.__version__,
                "torch": torch.__version__,
                "load_avg_before": self.load_before,
                "load_avg_after": loadavg(),
            },
            "settings": {
                "modes": [m.name for m in args.modes],
                "models": args.models,
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "contenders": args.contenders,
                "codecs": args.codecs,
                "protocols": args.protocols,
                "loadgen": args.loadgen,
                "shared": args.shared,
                "smoke": args.smoke,
                "env": args.env,
                "deployment_overrides": args.deployment,
                "mode_descriptions": {m.name: m.description for m in args.modes},
                "allotments": self.allotments,
            },
            "generator_ceiling": self.ceiling,
            "inprocess_limit": self.limits,
            "rows": self.rows,
            "transport": self.transport,
            "startup": self.startup,
            "request_path": self.request_path,
            "failures": self.failures,
            "skipped": self.skipped,
            "notes": self.notes,
        }
