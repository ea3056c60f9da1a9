"""The placement benchmark's report: table and targets (issue 22), from placement.json's data.

`python -m benchmarks.placement_report benchmarks/results/placement.json` prints it again (and
`--write` rewrites the .md beside it), so the report can change without rerunning anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.results import report_arguments, write_files

MIB = 2**20
# The contenders (benchmarks.placement runs them).
ON_DEMAND = "on_demand"
LEASTCONN = "on_demand leastconn"
MULTIPLEXED = "Ray multiplexed"
ALL_RESIDENT = "all resident"

# (header, key, format) of the table's columns.
COLUMNS = (
    ("contender", "contender", "{}"),
    ("runtime", "runtime", "{}"),
    ("req/s", "req_s", "{:.0f}"),
    ("hit ratio", "hit_ratio", "{:.3f}"),
    ("oracle", "oracle_hit_ratio", "{:.3f}"),
    ("loads/min", "loads_per_min", "{:.0f}"),
    ("hit p50 ms", "hit_p50_ms", "{:.2f}"),
    ("hit p99 ms", "hit_p99_ms", "{:.1f}"),
    ("miss p50 ms", "miss_p50_ms", "{:.0f}"),
    ("miss p99 ms", "miss_p99_ms", "{:.0f}"),
    ("load p50 ms", "load_s_p50_ms", "{:.0f}"),
    ("miss-load p50/p99 ms", "miss_minus_load", "{}"),
    ("RSS growth MiB", "rss_growth_peak_mib", "{}"),
    ("loaded MiB (budget)", "loaded", "{}"),
    ("failed", "failed", "{}"),
)


def _cell(row: dict[str, Any], key: str, spec: str) -> str:
    if key == "miss_minus_load":
        p50, p99 = row.get("miss_minus_load_p50_ms"), row.get("miss_minus_load_p99_ms")
        return "" if p50 is None else f"{p50:.0f} / {p99:.0f}"
    if key == "loaded":
        budget = row.get("budget", {}).get("memory_budget_bytes")
        if not row.get("loaded_bytes_peak_mib"):
            return ""
        return f"{row['loaded_bytes_peak_mib']}" + (f" ({budget / MIB:.0f})" if budget else "")
    value = row.get(key)
    return "" if value is None else spec.format(value)


def table(data: dict[str, Any]) -> str:
    lines = [
        "| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in data["rows"]:
        if "error" in row:
            continue
        lines.append("| " + " | ".join(_cell(row, key, spec) for _, key, spec in COLUMNS) + " |")
    return "\n".join(lines)


def replica_table(data: dict[str, Any]) -> str:
    """Per replica: its share of the requests, hit ratio, loads, and the top models it held."""
    lines = ["| contender | runtime | replica | requests | hit ratio | loads | models held | top-20 held |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in data["rows"]:
        for replica in row.get("per_replica", []):
            if "requests" not in replica:
                continue
            lines.append(
                f"| {row['contender']} | {row['runtime']} | {replica['pid']} | {replica['requests']} | "
                f"{_fmt(replica['hit_ratio'], '{:.3f}')} | {replica['loads']} | {replica['loaded_models']} | "
                f"{len(replica['top_held'])} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else spec.format(value)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def targets(data: dict[str, Any]) -> list[str]:
    """Issue 22's targets for each runtime's on_demand row, against the rows they name."""
    found = []
    rows = [r for r in data["rows"] if "error" not in r]
    largest = data["repository"]["max_mib"] * MIB
    for row in rows:
        if row["contender"] != ON_DEMAND or row["hit_ratio"] is None:
            continue
        runtime = row["runtime"]
        same = {r["contender"]: r for r in rows if r["runtime"] == runtime}
        tag = f"[{runtime}]"
        hit, oracle = row["hit_ratio"], row["oracle_hit_ratio"]
        found.append(
            f"{tag} hit ratio ≥ 0.9x oracle: {hit:.3f} vs 0.9 x {oracle:.3f} = {0.9 * oracle:.3f} "
            f"({hit / oracle:.2f}x): {_verdict(hit >= 0.9 * oracle)}"
        )
        if same.get(LEASTCONN, {}).get("hit_ratio"):
            other = same[LEASTCONN]["hit_ratio"]
            found.append(
                f"{tag} ≥ 1.3x the hit ratio without affinity: {hit:.3f} vs {other:.3f} "
                f"({hit / other:.2f}x): {_verdict(hit >= 1.3 * other)}"
            )
        if same.get(ALL_RESIDENT, {}).get("hit_p50_ms"):
            reference = same[ALL_RESIDENT]
            for q in ("p50", "p99"):
                ours, theirs = row[f"hit_{q}_ms"], reference[f"hit_{q}_ms"]
                found.append(
                    f"{tag} hit {q} within 1.2x all resident: {ours:.2f} vs {theirs:.2f} ms "
                    f"({ours / theirs:.2f}x): {_verdict(ours <= 1.2 * theirs)}"
                )
        if row["misses"]:
            over = row["misses_over_load_plus_50ms"]
            found.append(
                f"{tag} a miss ≤ its model's load time + 50 ms: miss - load p50 "
                f"{row['miss_minus_load_p50_ms']:.0f} ms, p99 {row['miss_minus_load_p99_ms']:.0f} ms, "
                f"max {row['miss_minus_load_max_ms']:.0f} ms; {over} of {row['misses']} misses over: "
                f"{_verdict(over == 0)}"
            )
        budget = row["budget"]["memory_budget_bytes"]
        loaded = row["loaded_bytes_peak_mib"] * MIB
        growth = row["rss_growth_peak_mib"] * MIB
        found.append(
            f"{tag} memory ≤ budget + one model ({(budget + largest) / MIB:.0f} MiB): loaded_bytes peak "
            f"{loaded / MIB:.0f} MiB, replica RSS growth peak {growth / MIB:.0f} MiB: "
            f"{_verdict(loaded <= budget + largest and growth <= budget + largest)}"
        )
    failed = {f"{r['contender']} [{r['runtime']}]": r["failed"] for r in rows}
    found.append(f"0 failed requests: {failed}: {_verdict(not any(failed.values()))}")
    return found


def render(data: dict[str, Any]) -> str:
    settings, machine, repository = data["settings"], data["machine"], data["repository"]
    headline = (
        f"{repository['models']} models of {repository['min_mib']}-{repository['max_mib']} MiB "
        f"(mean {repository['mean_mib']}, {repository['total_gib']} GiB); {settings['replicas']} replicas, "
        f"room for {settings['room']} models and {settings['memory_budget_bytes'] / MIB:.0f} MiB each; "
        f"{settings['clients']} closed-loop clients, Zipf s = {settings['zipf']}; {settings['seconds']:g} s "
        f"measured after {settings['warmup']:g} s warm-up. Load average before {machine['load_avg_before']}, "
        f"after {machine['load_avg_after']} ({machine['cpus']} cores, {machine['mem_total_gib']} GiB)."
    )
    failures = [
        f"- FAILED {r['contender']} [{r['runtime']}]: {r['error'][:400]}"
        for r in data["rows"]
        if "error" in r
    ]
    parts = [
        headline,
        table(data),
        replica_table(data),
        "\n".join(f"- {t}" for t in data.get("targets") or targets(data)),
        "\n".join(failures),
        "\n".join(f"- NOTE: {n}" for n in data.get("notes", [])),
    ]
    return "\n\n".join(p for p in parts if p)


def write(data: dict[str, Any], out: Path, tag: str = "") -> str:
    """placement<tag>.json and placement<tag>.md in `out`; the md text."""
    suffix = f"-{tag}" if tag else ""
    data["targets"] = targets(data)
    text = render(data)
    write_files(out, f"placement{suffix}", data, text, indent=1)
    return text


def main(argv: list[str] | None = None) -> None:
    args, data = report_arguments(
        "benchmarks.placement_report",
        __doc__,
        "a placement.json written by benchmarks.placement",
        "rewrite the .md beside it",
        argv,
    )
    data["targets"] = targets(data)
    text = render(data)
    if args.write:
        args.results.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
