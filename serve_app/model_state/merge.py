"""The deployment's statistics and repository index, from every replica's own.

Triton's statistics are counts and nanosecond totals, which add up across replicas; the
per-batch-size and per-memory rows add up by their key. An index row says the deployment's state
of a model version: READY only where every replica has it ready, and which replica has what
wherever they differ.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

# Rows of these lists add up by these fields (Triton's ModelStatistics message).
_ROW_KEYS = {"batch_stats": ("batch_size",), "memory_usage": ("type", "id")}
# Fields that name a row rather than count: kept as they are.
_NAMES = {"name", "version", "batch_size", "type", "id"}


def merge_statistics(documents: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Triton's `/v2/models/stats` body for the deployment: each model version's statistics summed."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for document in documents:
        for stats in document.get("model_stats", ()):
            key = (stats["name"], stats["version"])
            merged[key] = _add(merged[key], stats) if key in merged else copy.deepcopy(dict(stats))
    return {"model_stats": list(merged.values())}


def _add(total: Any, more: Any, field: str = "") -> Any:
    if isinstance(total, dict) and isinstance(more, dict):
        return {key: _add(total.get(key), more.get(key), key) for key in {**total, **more}}
    if isinstance(total, list) and isinstance(more, list):
        return _add_rows(total, more, _ROW_KEYS.get(field, ()))
    if total is None or more is None:
        return copy.deepcopy(more if total is None else total)
    if field == "last_inference":
        return max(total, more)
    if field in _NAMES or isinstance(total, (str, bool)):
        return total
    return total + more


def _add_rows(total: list[Any], more: list[Any], keys: tuple[str, ...]) -> list[Any]:
    if not keys:
        return copy.deepcopy(total) if total else copy.deepcopy(more)
    rows = {tuple(row.get(k) for k in keys): row for row in total}
    for row in more:
        key = tuple(row.get(k) for k in keys)
        rows[key] = _add(rows[key], row) if key in rows else copy.deepcopy(row)
    return list(rows.values())


def merge_index(rows_by_replica: Mapping[str, list[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """`/v2/repository/index` for the deployment from each replica's index rows.

    A model whose rows agree on every replica appears as any replica shows it. Otherwise each of
    its versions is READY only if every replica has it READY, else the first other state met; the
    reason says which replica has what, and the row's `replicas` field gives each replica's state.
    """
    names: dict[str, None] = {}
    per_replica: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for replica, rows in sorted(rows_by_replica.items()):
        by_name = per_replica[replica] = {}
        for row in rows:
            names.setdefault(row["name"], None)
            by_name.setdefault(row["name"], []).append(row)
    merged: list[dict[str, Any]] = []
    for name in names:
        views = {replica: by_name.get(name, []) for replica, by_name in per_replica.items()}
        shapes = {tuple((row.get("version"), row["state"]) for row in rows) for rows in views.values()}
        if len(shapes) == 1:
            merged.extend(dict(row) for row in next(iter(views.values())))
        else:
            merged.extend(_disagreeing(name, views))
    return merged


def _disagreeing(name: str, views: Mapping[str, list[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    versions = {row.get("version"): None for rows in views.values() for row in rows}
    if len(versions) > 1:
        versions.pop(None, None)  # a replica without the model beside versions others serve
    out = []
    for version in versions:
        states: dict[str, str] = {}
        reasons: list[str] = []
        for replica, rows in views.items():
            row = next((r for r in rows if r.get("version") == version), None)
            if row is None:  # this replica has no such version: its own row for the model says why
                row = rows[0] if rows else {"state": "UNAVAILABLE", "reason": "not in its repository index"}
                state = "UNAVAILABLE" if row["state"] == "READY" else row["state"]
            else:
                state = row["state"]
            states[replica] = state
            if state != "READY":
                reason = row.get("reason") or "not loaded"
                reasons.append(f"{replica}: {state}: {reason}")
        ready = [replica for replica, state in states.items() if state == "READY"]
        state = "READY" if len(ready) == len(states) else next(s for s in states.values() if s != "READY")
        reason = f"READY on {len(ready)} of {len(states)} replicas; " + "; ".join(reasons)
        row: dict[str, Any] = {"name": name, "state": state, "reason": reason, "replicas": states}
        if version is not None:
            row["version"] = version
        out.append(row)
    return out


def on_demand_index(
    names: list[str], wanted: Callable[[str], bool], answers: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """`/v2/repository/index` under on-demand placement: every model of the repository, READY
    when the deployment serves it (loaded on its first request if no replica holds it yet), with
    the replicas that hold it now (`loaded_on`); UNAVAILABLE when unloaded, or while a replica's
    failed load of it is in its back-off, with the reason."""
    rows: list[dict[str, Any]] = []
    for name in names:
        failed = [
            (replica, a["failed"][name]) for replica, a in sorted(answers.items()) if name in a["failed"]
        ]
        if not wanted(name):
            rows.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
        elif failed:
            reason = "; ".join(f"{replica}: {error}" for replica, error in failed)
            rows.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        else:
            loaded_on = [replica for replica, a in sorted(answers.items()) if name in a["loaded"]]
            rows.append({"name": name, "state": "READY", "reason": "", "loaded_on": loaded_on})
    return rows
