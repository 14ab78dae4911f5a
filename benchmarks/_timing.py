"""Timing and reporting helpers shared by the benchmark subcommands."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def interleaved_medians(fns: Mapping[str, Callable[[], Any]], repeats: int = 5,
                        warmup: int = 1, budget_s: float = 60.0,
                        between: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median wall time (seconds) of each no-argument callable, measured round-robin.

    Every callable is compiled and warmed up first, then timed once per round, so load
    changes on a shared machine hit all of them alike. ``between`` (untimed, e.g.
    :func:`cache_flusher`) runs before every timed call, so no callable inherits the cache
    state the previous one left. Rounds stop early (after at least 2) once ``budget_s`` is
    spent.
    """
    for f in fns.values():
        for _ in range(warmup + 1):
            jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(repeats):
        for k, f in fns.items():
            if between is not None:
                jax.block_until_ready(between())
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
        if r >= 1 and time.perf_counter() - start > budget_s:
            break
    return {k: float(np.median(v)) for k, v in times.items()}


FLUSH_MIB = 64
"""MiB that :func:`cache_flusher` reads by default (and the benchmark headers quote)."""


def cache_flusher(mib: int = FLUSH_MIB) -> Callable[[], Any]:
    """A callable that reads ``mib`` MiB (twice a large L3), for ``between=``: every timed
    call then finds its operands out of cache, as a layer of a model does after the other
    layers ran, whatever the previous callable read or wrote (a 17 MB TW weight read right
    after the XLA TW path read it would hit L3; one read after a call that wrote 64 MB
    would share the memory bus with their write-back)."""
    buf = jnp.ones((mib << 20) // 4, jnp.float32)
    read = jax.jit(jnp.sum)
    jax.block_until_ready(read(buf))
    return lambda: read(buf)


def machine_info() -> dict[str, Any]:
    """Where and under what load a benchmark ran."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in load],
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def record_end_load(payload: dict[str, Any]) -> None:
    """Store the load average at the end of a run in ``payload["machine"]``."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    payload.setdefault("machine", {})["loadavg_end"] = [round(x, 2) for x in load]


def write_results(out_dir: str, name: str, payload: dict[str, Any], markdown: str) -> None:
    """Write ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``."""
    os.makedirs(out_dir, exist_ok=True)
    if "loadavg_end" not in payload.get("machine", {}):
        record_end_load(payload)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
