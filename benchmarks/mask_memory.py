"""Memory of the sharded mask update: per-device temp bytes and time on 1/2/4/8 devices.

The configuration of issue 19: two f32 kernels 4096x8192 and 8192x4096 (268 MB), split
over a ``"model"`` mesh axis as in tensor parallelism (``P(None, "model")`` and
``P("model", None)``), meshes ``(data, model)`` = (1, 1), (1, 2), (1, 4), (2, 4) of
simulated CPU devices. For every pattern and scope, the mask-update step of
``optax.chain(optax.sgd(1e-3), prune(pattern, OneShot(s)))`` is compiled and XLA's own
memory analysis read (``compiled.memory_analysis().temp_size_in_bytes``: per device), then
the step is run and timed. Each device count runs in its own subprocess, since
``--xla_force_host_platform_device_count`` is read when JAX starts. Target (issue 19):
temp <= 1.5x the per-device parameter bytes.

Run: ``python -m benchmarks mask_memory [--quick] [--repeats 1]`` (``--quick``: kernels
a quarter of the size each way); writes ``<out>/mask_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks._timing import machine_info, md_table, record_end_load, write_results
from tvwjax.patterns import EW, NM, TVW, TW

#: (label, pattern, sparsity, scopes)
CASES = [("TVW 75%", TVW(128), 0.75, ("layer", "global")),
         ("TW 75%", TW(128), 0.75, ("layer", "global")),
         ("EW 75%", EW(), 0.75, ("layer", "global")),
         ("2:4", NM(), 0.5, ("layer",))]
MESHES = {1: (1, 1), 2: (1, 2), 4: (1, 4), 8: (2, 4)}
TARGET = 1.5


def measure(devices: int, scale: int, repeats: int) -> dict:
    """In a process started with ``devices`` simulated devices: temp bytes and step time
    of every case, plus the per-device parameter bytes."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P


    assert len(jax.devices()) == devices, jax.devices()
    mesh = jax.make_mesh(MESHES[devices], ("data", "model"))
    k, n = 4096 // scale, 8192 // scale
    layout = {"w1": ((k, n), P(None, "model")), "w2": ((n, k), P("model", None))}
    rng = np.random.default_rng(0)
    params = {name: {"kernel": jax.device_put(rng.standard_normal(shape, np.float32),
                                              NamedSharding(mesh, spec))}
              for name, (shape, spec) in layout.items()}
    grads = jax.tree.map(lambda p: p * 0.01, params)
    per_device = sum(4 * a * b for (a, b), _ in layout.values()) / mesh.shape["model"]
    rows = {}
    with jax.set_mesh(mesh):  # jit(tx.init) builds the masks on the parameters' mesh
        for label, pattern, s, scopes in CASES:
            for scope in scopes:
                rows[f"{label}, {scope}"] = _case(devices, label, pattern, s, scope, params,
                                                  grads, per_device, repeats)
    return {"devices": devices, "mesh": MESHES[devices], "param_bytes_per_device": per_device,
            "cases": rows}


def _case(devices, label, pattern, s, scope, params, grads, per_device, repeats) -> dict:
    """Compile, measure and time one mask-update step."""
    import jax
    import numpy as np
    import optax

    import tvwjax

    tx = optax.chain(optax.sgd(1e-3), tvwjax.prune(pattern, tvwjax.OneShot(s),
                                                   scope=scope))

    def step(p, st, g, tx=tx):
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), st

    state = jax.jit(tx.init)(params)
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, state, grads).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes
    times = []
    for _ in range(repeats):  # compiled already: no compilation in the timing
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, state, grads))
        times.append(time.perf_counter() - t0)
    row = {"temp_bytes": temp, "ratio": temp / per_device,
           "step_s": float(np.median(times)), "compile_s": compile_s}
    print(f"{devices} devices  {label}, {scope}: {temp / 1e6:.1f} MB "
          f"({temp / per_device:.2f}x), {row['step_s']:.2f} s",
          file=sys.stderr, flush=True)
    return row


def _child(devices: int, scale: int, repeats: int) -> dict:
    """Run :func:`measure` in a fresh process with ``devices`` simulated devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={devices}").strip())
    code = ("import json, benchmarks.mask_memory as m; "
            f"print(json.dumps(m.measure({devices}, {scale}, {repeats})))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                          stdout=subprocess.PIPE, timeout=7200)
    if proc.returncode:
        raise RuntimeError(f"mask_memory: the {devices}-device run failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def to_markdown(runs: list[dict], scale: int, info: dict) -> str:
    """Temp per device (MB and x the per-device parameter bytes) and step time."""
    counts = [r["devices"] for r in runs]
    header = ["masks"] + [f"{d} dev: temp MB (x params/dev)" for d in counts] + \
        [f"{d} dev: step s" for d in counts]
    rows = []
    for case in runs[0]["cases"]:
        cells = [case]
        for r in runs:
            c = r["cases"][case]
            cells.append(f"{c['temp_bytes'] / 1e6:.0f} ({c['ratio']:.2f}x)")
        cells += [f"{r['cases'][case]['step_s']:.2f}" for r in runs]
        rows.append(cells)
    params = ", ".join(f"{d} dev: {r['param_bytes_per_device'] / 1e6:.0f} MB"
                       for d, r in zip(counts, runs, strict=True))
    k, n = 4096 // scale, 8192 // scale
    return (f"Mask-update step of `chain(sgd, prune(pattern, OneShot(s)))`, kernels {k}x{n} "
            f"(`P(None, 'model')`) and {n}x{k} (`P('model', None)`), meshes (data, model) "
            f"{', '.join(str(MESHES[d]) for d in counts)} of simulated CPU devices; temp = "
            f"XLA's per-device temp bytes of the compiled step, x = per-device parameter "
            f"bytes ({params}). Target: <= {TARGET}x. Step time: median of timed runs of the "
            f"compiled step, all simulated devices sharing {info['cpus']} CPU cores (load average "
            f"{info['loadavg_start'][0]} at the start, {info.get('loadavg_end', ['?'])[0]} at "
            f"the end), so it grows with the device count.\n\n" + md_table(header, rows))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m benchmarks mask_memory``."""
    p.add_argument("--devices", default="1,2,4,8", help="device counts (default 1,2,4,8)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case (default 1)")


def run(args: argparse.Namespace) -> int:
    """Run every device count and write ``<out>/mask_memory.{json,md}``."""
    scale = 4 if args.quick else 1
    info = machine_info()
    runs = [_child(int(d), scale, args.repeats) for d in args.devices.split(",")]
    payload = {"scale": scale, "runs": runs, "machine": info, "target": TARGET}
    record_end_load(payload)
    md = to_markdown(runs, scale, payload["machine"])
    write_results(args.out, "mask_memory" + ("_quick" if args.quick else ""), payload, md)
    print(md)
    return 0
