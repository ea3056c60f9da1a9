"""The report: ratios, tables, targets and the plot, all from results.json's data.

`python -m benchmarks.report benchmarks/results/results.json` prints the tables again (and
`--write` rewrites the .md beside it), so the report can change without rerunning anything.

Ratios: `xlimit` = req/s / the in-process limit's samples/s at batch 64 (same model); `xplain` =
req/s / plain Ray Serve's in the same mode at the same concurrency; `xtriton` = req/s / standalone
Triton's for the same model, codec, concurrency, load generator and protocol (serve_app rows only).
gRPC rows (protocol `grpc`, codec `raw`) sit in the main table and again beside their HTTP
binary twins in the gRPC table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.contenders import LIMIT, NOOP, OURS, PLAIN, SERVE_APPS, STANDALONE, STANDALONE_MODE
from benchmarks.loadgen import GRPC_CODEC
from benchmarks.results import report_arguments, write_files
from benchmarks.workloads import MODELS


def add_ratios(data: dict[str, Any]) -> None:
    """Set x_limit, x_plain, x_plain_stock and x_triton on every row."""
    rows = data["rows"]
    plain = {
        (r["mode"], r["model"], r["concurrency"]): r["throughput"] for r in rows if r["contender"] == PLAIN
    }
    triton = {_triton_key(r): r for r in rows if r["contender"] == STANDALONE}
    for row in rows:
        limit = data["inprocess_limit"].get(row["model"], {}).get("batch64", {}).get("samples_per_s")
        row["x_limit"] = row["throughput"] / limit if limit and row["model"] != "-" else None
        base = plain.get((row["mode"], row["model"], row["concurrency"]))
        row["x_plain"] = row["throughput"] / base if base and row["contender"] != PLAIN else None
        stock = plain.get(("stock", row["model"], row["concurrency"]))
        row["x_plain_stock"] = row["throughput"] / stock if stock and row["contender"] != PLAIN else None
        reference = triton.get(_triton_key(row)) if row["contender"] in OURS else None
        row["x_triton"] = row["throughput"] / reference["throughput"] if reference else None
        row["p50_vs_triton_ms"] = row["p50_ms"] - reference["p50_ms"] if reference else None


def _triton_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["model"], row["codec"], row["concurrency"], row.get("loadgen", "wrk"), _protocol(row)


def _protocol(row: dict[str, Any]) -> str:
    return row.get("protocol", "http")  # results.json of runs before gRPC rows: all HTTP


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value else ""


# The main table's columns: name, width, alignment.
COLUMNS = (
    ("contender", 24, "<"), ("mode", 16, "<"), ("model", 7, "<"), ("proto", 5, "<"), ("codec", 6, "<"),
    ("conc", 4, ">"), ("req/s", 8, ">"), ("p50 ms", 8, ">"), ("p99 ms", 8, ">"), ("err", 4, ">"),
    ("xlimit", 6, ">"), ("xplain", 6, ">"), ("xtriton", 7, ">"),
)  # fmt: skip


def _line(cells: list[Any]) -> str:
    return "| " + " | ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, COLUMNS, strict=True)) + " |"


def table(data: dict[str, Any]) -> str:
    header = _line([name for name, _, _ in COLUMNS])
    lines = [header, "|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|"]
    for name, entry in data["inprocess_limit"].items():
        best = entry["batch64"]["samples_per_s"]
        for sample in entry["samples"]:
            b64 = sample["batch64"]
            lines.append(
                _line([
                    f"{LIMIT} b64 {sample['when']}", "2 threads", name, "-", "-", "-",
                    f"{b64['samples_per_s']:.1f}", f"{b64['p50_ms']:.2f}", f"{b64['p99_ms']:.2f}", 0,
                    f"{b64['samples_per_s'] / best:.2f}", "", "",
                ])
            )  # fmt: skip
    for row in data["rows"]:
        lines.append(
            _line([
                row["contender"], row["mode"], row["model"], _protocol(row), row["codec"], row["concurrency"],
                f"{row['throughput']:.1f}", f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", row["errors"],
                _ratio(row.get("x_limit")), _ratio(row.get("x_plain")), _ratio(row.get("x_triton")),
            ])
        )  # fmt: skip
    return "\n".join(lines)


def grpc_table(data: dict[str, Any]) -> str:
    """Each gRPC row beside the HTTP binary row of the same contender, mode, model and concurrency
    (measured with the same load generator where the run has one, else with wrk)."""
    http: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in data["rows"]:
        if _protocol(r) == "http" and r["codec"] == "binary":
            http.setdefault(_twin_key(r), {})[r.get("loadgen", "wrk")] = r
    lines = _header(
        "contender", "mode", "model", "conc", "gRPC req/s", "HTTP binary req/s", "gRPC/HTTP", "gRPC p50 ms",
        "HTTP p50 ms", "gRPC p99 ms", "HTTP p99 ms", "HTTP load generator",
    )  # fmt: skip
    for g in (r for r in data["rows"] if _protocol(r) == "grpc"):
        twins = http.get(_twin_key(g), {})
        h = twins.get(g.get("loadgen", "wrk")) or next(iter(twins.values()), None)
        ratio = f"{g['throughput'] / h['throughput']:.2f}" if h and h["throughput"] else ""
        lines.append(
            _row(
                g["contender"], g["mode"], g["model"], g["concurrency"], f"{g['throughput']:.1f}",
                _value(h, "throughput", ".1f"), ratio, f"{g['p50_ms']:.2f}", _value(h, "p50_ms", ".2f"),
                f"{g['p99_ms']:.2f}", _value(h, "p99_ms", ".2f"), _value(h, "loadgen", ""),
            )
        )  # fmt: skip
    return "\n".join(lines) if len(lines) > 2 else ""


def _header(*columns: str) -> list[str]:
    """A markdown table's header row and the line under it."""
    return [_row(*columns), "|" + "---|" * len(columns)]


def _row(*cells: object) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _value(row: dict[str, Any] | None, key: str, spec: str) -> str:
    """A cell of the gRPC table's HTTP side: empty where the run has no HTTP twin."""
    return format(row.get(key, "wrk" if key == "loadgen" else ""), spec) if row else ""


def _twin_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["contender"], row["mode"], row["model"], row["concurrency"]


def transport_table(data: dict[str, Any]) -> str:
    lines = _header(
        "contender", "mode", "codec", "conc", "req/s", "GB/s tensor each way", "GB/s wire both ways",
        "body MiB", "p50 ms", "err",
    )  # fmt: skip
    for t in data["transport"]:
        lines.append(
            _row(
                t["contender"], t["mode"], t["codec"], t["concurrency"], f"{t['throughput']:.1f}",
                f"{t['gb_per_s']:.3f}", f"{t['wire_gb_per_s']:.3f}", f"{t['request_bytes'] / 2**20:.1f}",
                f"{t['p50_ms']:.1f}", t["errors"],
            )
        )  # fmt: skip
    return "\n".join(lines)


def request_path_table(data: dict[str, Any]) -> str:
    lines = _header(
        "mode", "contenders", "ready s", "SIGINT stop s", "graceful", "haproxy seen/left", "leftovers",
        "autoscaling: controller decisions (replicas at end) / CPU allotment",
    )  # fmt: skip
    for e in data["request_path"]:
        if "kill_test" in e:
            k = e["kill_test"]
            lines.append(
                _row(
                    f"{e['mode']} (SIGKILL test)", "noop", "", "", "no", f"-/{k['haproxy_left']}",
                    len(k["leftovers"]), f"serve port open after: {k['serve_port_open']}",
                )
            )  # fmt: skip
            continue
        stop = e.get("stop", {})
        if "allotment" in e:
            last = e["allotment"]
        else:
            last = "; ".join(_short_event(x) for x in e.get("autoscaling_events", [])) or "none"
            last += f" ({e.get('replicas_at_end')})"
        lines.append(
            _row(
                e["mode"], "+".join(e["contenders"]), e["ready_s"], f"{stop.get('seconds', 0):.1f}",
                stop.get("graceful"), f"{stop.get('haproxy_seen')}/{stop.get('haproxy_left')}",
                len(stop.get("leftovers", [])), last,
            )
        )  # fmt: skip
    for s in data["startup"]:
        stop = s["stop"]
        what = s.get("what", "configs/app.yaml")
        lines.append(
            _row(
                f"{s['mode']} ({what})", "serve_app", s["ready_s"], f"{stop['seconds']:.1f}",
                stop["graceful"], f"{stop['haproxy_seen']}/{stop['haproxy_left']}",
                len(stop["leftovers"]), "",
            )
        )  # fmt: skip
    return "\n".join(lines)


def _short_event(line: str) -> str:
    """`Upscaling Deployment(name='X', app='a') from 1 to 2 replicas. Current ongoing requests: 63.0, ..`."""
    words = line.replace("Deployment(name=", "").split()
    try:
        direction, name = words[0], words[1].split("'")[1]
        counts = line.split(" from ", 1)[1].split(" replicas", 1)[0].replace(" to ", "->")
        ongoing = line.split("ongoing requests: ", 1)[1].split(",", 1)[0]
    except IndexError:
        return line[:80]
    return f"{name} {direction.lower().removesuffix('ing')} {counts} at {ongoing} ongoing"


def targets(data: dict[str, Any]) -> list[str]:
    """The project's targets (T1-T5) and the comparison with standalone Triton (T6), in words."""
    out = []
    settings = data["settings"]
    top = max(settings["concurrency"])

    def rows(**match: Any) -> list[dict]:
        return [r for r in data["rows"] if all(r.get(k) == v for k, v in match.items())]

    for contender in SERVE_APPS:
        for mode in settings["modes"]:
            best = rows(contender=contender, mode=mode, model="mlp4096", codec="binary", concurrency=64)
            if best and best[0].get("x_limit") is not None:
                out.append(
                    f"T1 {contender} [{mode}] mlp4096 c=64: {best[0]['throughput']:.0f}/s = "
                    f"{best[0]['x_limit']:.2f}x in-process limit (target >= 0.7)"
                )
            for model in settings["models"]:
                for r in rows(contender=contender, mode=mode, model=model, codec="binary", concurrency=64):
                    if r.get("x_plain"):
                        stock = r.get("x_plain_stock")
                        versus_stock = f", {stock:.2f}x plain in stock mode" if stock else ""
                        out.append(
                            f"T2 {contender} [{mode}] {model} c=64: {r['x_plain']:.2f}x plain Ray Serve "
                            f"same mode{versus_stock} (target >= 3)"
                        )
            ours = rows(contender=contender, mode=mode, model="tiny", codec="binary", concurrency=1)
            noop = rows(contender=NOOP, mode=mode, concurrency=1)
            if ours and noop:
                delta = ours[0]["p50_ms"] - noop[0]["p50_ms"]
                out.append(
                    f"T3 {contender} [{mode}] tiny c=1 p50 {ours[0]['p50_ms']:.2f} ms vs no-op "
                    f"{noop[0]['p50_ms']:.2f} ms: {delta:+.2f} ms (target <= +1 ms)"
                )
            for codec in ("binary", GRPC_CODEC):  # HTTP binary tensors, gRPC raw_input_contents
                for model in settings["models"]:
                    for r in rows(contender=contender, mode=mode, model=model, codec=codec, concurrency=top):
                        if r.get("x_triton"):
                            out.append(
                                f"T6 {contender} [{mode}] {model} c={top}: {r['throughput']:.0f}/s = "
                                f"{r['x_triton']:.2f}x standalone Triton [{_via(r)}]"
                            )
                for r in rows(contender=contender, mode=mode, model="tiny", codec=codec, concurrency=1):
                    if r.get("p50_vs_triton_ms") is not None:
                        out.append(
                            f"T6 {contender} [{mode}] tiny c=1 p50 {r['p50_ms']:.2f} ms: "
                            f"{r['p50_vs_triton_ms']:+.2f} ms vs standalone Triton [{_via(r)}]"
                        )
    for t in data["transport"]:
        if t["codec"] == "binary":
            out.append(
                f"T4 {t['contender']} [{t['mode']}] 4 MiB binary c={t['concurrency']}: "
                f"{t['gb_per_s']:.3f} GB/s of tensor each way, {t['wire_gb_per_s']:.3f} GB/s on the wire "
                "(target >= 0.5)"
            )
    for s in data["startup"]:
        out.append(
            f"T5 serve run {s.get('what', 'configs/app.yaml')} [{s['mode']}]: ready after {s['ready_s']} s "
            "(target <= 15)"
        )
    for e in data["request_path"]:
        if e.get("mode") == STANDALONE_MODE:
            out.append(f"T5 {STANDALONE} (tritonserver binary): ready after {e['ready_s']} s, for reference")
    return out


def _via(row: dict[str, Any]) -> str:
    """`wrk`, `perf_analyzer`, `perf_analyzer gRPC`: how a row was measured."""
    return row.get("loadgen", "wrk") + (" gRPC" if _protocol(row) == "grpc" else "")


MODE_STYLES = {"stock": ":", "stock-quiet": ":", "throughput": "-.", "haproxy": "-", "uvicorn": "--",
               "throughput-proxy": (0, (3, 1, 1, 1, 1, 1)), STANDALONE_MODE: (0, (6, 1))}  # fmt: skip


def _codec_label(row: dict[str, Any]) -> str:
    return "gRPC" if _protocol(row) == "grpc" else row["codec"]


def plot(data: dict[str, Any], path: Path) -> bool:
    """Throughput vs concurrency, one panel per model: colour = contender (+codec), line = mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install matplotlib): no plot")
        return False
    models = [m for m in data["settings"]["models"] if any(r["model"] == m for r in data["rows"])]
    if not models:
        return False
    kinds = sorted({(r["contender"], _codec_label(r)) for r in data["rows"] if r["model"] in models})
    colors = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.2), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, model in zip(axes[0], models, strict=True):
        series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
        for r in data["rows"]:
            if r["model"] == model:
                series.setdefault((r["contender"], _codec_label(r), r["mode"]), []).append(
                    (r["concurrency"], r["throughput"])
                )
        for (contender, codec, mode), points in sorted(series.items()):
            points.sort()
            label = f"{contender} {codec} [{mode}]"
            (line,) = ax.plot(
                [p[0] for p in points], [p[1] for p in points], linestyle=MODE_STYLES.get(mode, "-"),
                color=colors[(contender, codec)], marker="o", markersize=3, linewidth=1.3, label=label,
            )  # fmt: skip
            handles.setdefault(label, line)
        limit = data["inprocess_limit"].get(model, {}).get("batch64", {}).get("samples_per_s")
        if limit:
            handles["in-process limit, batch 64"] = ax.axhline(
                limit, color="black", linewidth=1.5, linestyle=":"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients (1 sample per request)")
        ax.set_ylabel("requests/s")
        ax.set_title(f"{model}: {MODELS[model].description}", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=6, frameon=False)
    machine = data["machine"]
    load = f"load avg {machine['load_avg_before'][0]} before, {machine['load_avg_after'][0]} after"
    fig.suptitle(f"serve_app benchmark: {machine['cpus']} cores, {load}", fontsize=9)
    rows = (len(handles) + 3) // 4
    fig.tight_layout(rect=(0, 0.04 + 0.025 * rows, 1, 1))
    fig.savefig(path, dpi=64, pil_kwargs={"optimize": True})
    plt.close(fig)
    return True


def render(data: dict[str, Any]) -> str:
    """results.md: the headline, every table, the targets, and what failed or was skipped."""
    settings, machine = data["settings"], data["machine"]
    loadgen = settings.get("loadgen", "wrk")
    headline = (
        f"load average before {machine['load_avg_before']}, after {machine['load_avg_after']} "
        f"({machine['cpus']} cores); {settings['seconds']:g} s per point after "
        f"{settings['warmup']:g} s warm-up; "
        f"load generator: {loadgen} for KServe rows"
        + (", wrk for the others" if loadgen != "wrk" else "")
        + ("; gRPC rows: perf_analyzer -i grpc" if "grpc" in settings.get("protocols", []) else "")
    )
    allotments = "\n".join(f"- {name}: {text}" for name, text in settings.get("allotments", {}).items())
    problems = [
        f"- FAILED {f['contender']} [{f['mode']}]: {f['why'][:300]}" for f in data.get("failures", [])
    ]
    problems += [f"- skipped {s['contender']}: {s['why']}" for s in data.get("skipped", [])]
    parts = [
        headline,
        allotments,
        table(data),
        grpc_table(data),
        transport_table(data) if data["transport"] else "",
        request_path_table(data),
        "\n".join(f"- {t}" for t in data.get("targets") or targets(data)),
        "\n".join(problems),
        "\n".join(f"- NOTE: {n}" for n in data["notes"]),
    ]
    return "\n\n".join(p for p in parts if p)


def write(data: dict[str, Any], out: Path, tag: str = "", with_plot: bool = True) -> str:
    """results<tag>.json, results<tag>.md and (with_plot) throughput<tag>.png in `out`; the md text."""
    suffix = f"-{tag}" if tag else ""
    add_ratios(data)
    data["targets"] = targets(data)
    text = render(data)
    write_files(out, f"results{suffix}", data, text)
    if with_plot:
        plot(data, out / f"throughput{suffix}.png")
    return text


def main(argv: list[str] | None = None) -> None:
    args, data = report_arguments(
        "benchmarks.report",
        __doc__,
        "a results.json written by benchmarks.run",
        "rewrite the .md (and .png) beside it",
        argv,
    )
    add_ratios(data)
    data["targets"] = targets(data)
    if args.write:
        stem = args.results.stem
        md = args.results.with_suffix(".md")
        md.write_text(render(data) + "\n")
        plot(data, args.results.with_name(stem.replace("results", "throughput", 1) + ".png"))
    print(render(data))


if __name__ == "__main__":
    main()
