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
    changes on a shared machine hit all of them alike. Odd rounds run the callables in
    reverse order, so none always follows the same one: in a fixed order, a variant timed
    after another that left the machine busier (memory freed, pool threads awake or asleep)
    carried that bias into every round (BERT-base's ``tw`` and ``tw+keep_faster`` models,
    the same 72 compressed layers, measured 2.55x and 2.24x of dense in fixed order and
    within 2% of each other alternating). ``between`` (untimed, e.g.
    :func:`cache_flusher`) runs before every timed call, so no callable inherits the cache
    state the previous one left. Rounds stop early (after at least 2) once ``budget_s`` is
    spent.
    """
    for f in fns.values():
        for _ in range(warmup + 1):
            jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    order = list(fns)
    for r in range(repeats):
        for k in (order if r % 2 == 0 else order[::-1]):
            f = fns[k]
            if between is not None:
                jax.block_until_ready(between())
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
        if r >= 1 and time.perf_counter() - start > budget_s:
            break
    return {k: float(np.median(v)) for k, v in times.items()}


FLUSH_MIB = 64
"""The least MiB that :func:`cache_flusher` reads (twice a typical server L3 slice)."""

FLUSH_MAX_MIB = 1024
"""The most MiB that :func:`cache_flusher` reads by default, whatever the L3 reports."""


def last_level_cache_mib(base: str = "/sys/devices/system/cpu/cpu0/cache") -> float | None:
    """The largest CPU cache this machine reports (Linux sysfs ``base``), in MiB; ``None``
    when unknown."""
    sizes = []
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as f:
                    text = f.read().strip().upper()
            except OSError:
                continue
            mult = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1:], None)
            if mult is None or not text[:-1].isdigit():
                continue
            sizes.append(int(text[:-1]) * mult)
    except OSError:
        return None
    return max(sizes) if sizes else None


def default_flush_mib() -> int:
    """MiB :func:`cache_flusher` reads by default: twice the last-level cache (so no operand
    survives in it), at least :data:`FLUSH_MIB`, at most :data:`FLUSH_MAX_MIB`."""
    llc = last_level_cache_mib()
    want = FLUSH_MIB if llc is None else int(2 * llc + 0.5)
    return max(FLUSH_MIB, min(FLUSH_MAX_MIB, want))


def cache_flusher(mib: int | None = None) -> Callable[[], Any]:
    """A callable that reads ``mib`` MiB (default :func:`default_flush_mib`: twice the L3),
    for ``between=``: every timed call then finds its operands out of cache, as a layer of a
    model does after the other layers ran, whatever the previous callable read or wrote (a
    17 MB TW weight read right after the XLA TW path read it would hit L3; one read after a
    call that wrote 64 MB would share the memory bus with their write-back). The size read
    is the callable's ``mib`` attribute, for the reports."""
    mib = default_flush_mib() if mib is None else int(mib)
    buf = jnp.ones((mib << 20) // 4, jnp.float32)
    read = jax.jit(jnp.sum)
    jax.block_until_ready(read(buf))

    def flush() -> Any:
        return read(buf)

    flush.mib = mib  # type: ignore[attr-defined]
    return flush


def layer_chain(product: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """``jit(f)`` with ``f(x, ws, b)`` running the linear layers ``x = product(x, w) + b`` for
    ``w`` in ``ws`` one after the other, in one program: how the layers of a model run.

    Every variant, dense included, is timed as the layers it stands for (product plus bias,
    ``b`` a runtime argument). A jitted program holding nothing but a custom call (the CPU TW
    kernel) is one that XLA counts as 0 FLOPs, and XLA:CPU runs programs under 1000 FLOPs
    synchronously on the calling Python thread instead of its executor thread; the kernel's
    helper thread then competes with the caller for a core (on a 2-vCPU VM the caller was
    parked for about a millisecond per call). A layer of a model never runs that way. With
    several weights, the per-call cost of a jitted call (Python dispatch, which after a cache
    flush also finds JAX's own runtime data out of cache) is paid once for all of them, as
    in a model; one weight times one layer called on its own.
    """
    def chain(x, ws, b):
        for w in ws:
            x = product(x, w) + b
        return x

    return jax.jit(chain)


def linear_layer(product: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """``(x, w, b) -> product(x, w) + b`` as one jitted call: :func:`layer_chain` of one
    layer."""
    chain = layer_chain(product)
    return lambda x, w, b: chain(x, (w,), b)


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
