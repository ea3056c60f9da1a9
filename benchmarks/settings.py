"""The benchmark's command line: presets (full, --quick, --smoke) and every knob they set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.contenders import ALL_CONTENDERS, NOOP, NORAY, PLAIN, SERVE_APP, STANDALONE, TRITON
from benchmarks.results import preset_parser
from benchmarks.servers import MODES, ROOT

RESULTS = ROOT / "benchmarks" / "results"
LOADGENS = ("wrk", "perf_analyzer")
# The KServe rows' transports: HTTP (wrk or perf_analyzer, per codec) and Triton's gRPC API
# (perf_analyzer -i grpc; serve_app, serve_app triton and standalone Triton serve it).
PROTOCOLS = ("http", "grpc")

# --quick; the other presets are it with some values changed. Flags a preset sets are on in it.
QUICK: dict[str, Any] = dict(
    modes="stock,haproxy",
    models="mlp4096,mlp1024,tiny",
    concurrency="1,64",
    seconds=5,
    warmup=2,
    codecs="binary,json",
    protocols="http,grpc",
    contenders=",".join((SERVE_APP, TRITON, PLAIN, NOOP, STANDALONE)),
)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": QUICK,
    # Seconds-long points on one shared cluster: what tests/e2e/test_benchmark_smoke.py runs.
    "smoke": {
        **QUICK,
        **dict(modes="stock", models="tiny", concurrency="4", seconds=1, warmup=0),
        **dict(shared=True, no_transport=True, no_startup=True, no_settle=True),
    },
    "full": {
        **QUICK,
        **dict(modes="stock,throughput,haproxy", concurrency="1,8,64", seconds=8, kill_test=True),
        "contenders": ",".join((SERVE_APP, TRITON, PLAIN, NOOP, NORAY, STANDALONE)),
    },
}


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The run's settings: a preset's values, overridden by any option given."""
    parser = preset_parser(
        "benchmarks.run",
        description,
        quick="stock + haproxy, concurrency 1/64, 5 s points",
        smoke="seconds-long points, shared cluster, no plot",
    )
    parser.add_argument("--modes", help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--models", help="comma list of mlp4096, mlp1024, tiny")
    parser.add_argument("--concurrency", help="comma list, e.g. 1,8,64")
    parser.add_argument("--contenders", help=f"comma list of {', '.join(ALL_CONTENDERS)}")
    parser.add_argument("--codecs", help="comma list of binary, json (KServe contenders)")
    parser.add_argument(
        "--protocols",
        help="comma list of http, grpc (KServe contenders; gRPC rows: serve_app, serve_app triton and "
        "standalone Triton, always driven by perf_analyzer -i grpc)",
    )
    parser.add_argument(
        "--loadgen",
        choices=LOADGENS,
        default="wrk",
        help="load generator of the KServe rows (serve_app, standalone Triton); the others always use wrk",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each point")
    parser.add_argument("--shared", action="store_true", help="all Ray contenders in one serve run per mode")
    parser.add_argument("--no-transport", action="store_true", help="skip the 4 MiB round trip")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="measure heavy points without first waiting for autoscaling to settle",
    )
    parser.add_argument(
        "--no-startup",
        action="store_true",
        help="skip the `serve run` startup timings (configs/app.yaml; 1 and 100 tiny models)",
    )
    parser.add_argument(
        "--kill-test", action="store_true", help="SIGKILL a haproxy-mode serve run, check orphans"
    )
    parser.add_argument("--noray-threads", type=int, default=1, help="torch threads of the no-Ray server")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every serve run",
    )
    parser.add_argument(
        "--deployment",
        default="{}",
        metavar="JSON",
        help="overrides for serve_app's deployment in configs/app.yaml, e.g. '{\"num_replicas\": 2}' "
        "(standalone Triton's CPU allotment follows them)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--tag", default="", help="suffix for result file names")
    args = parser.parse_args(argv)

    defaults = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    for key, value in defaults.items():
        given = getattr(args, key)
        if given is None or given is False:  # not given (a flag: not set; a 0 is given)
            setattr(args, key, value)
    unknown_modes = set(args.modes.split(",")) - set(MODES)
    if unknown_modes:
        parser.error(f"unknown modes {sorted(unknown_modes)}")
    args.modes = [MODES[m] for m in args.modes.split(",")]
    args.models = args.models.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.codecs = args.codecs.split(",")
    args.protocols = args.protocols.split(",")
    if set(args.protocols) - set(PROTOCOLS):
        parser.error(f"unknown protocols {sorted(set(args.protocols) - set(PROTOCOLS))}")
    args.contenders = args.contenders.split(",")
    unknown = set(args.contenders) - set(ALL_CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}")
    return args
