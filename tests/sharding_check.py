"""Sharded vs single-device results, run by ``tests/test_sharding.py`` in a subprocess.

It must start with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` in the
environment (the flag is read when JAX initialises, hence the separate process). Parameters
are sharded with ``NamedSharding`` over a ``(data=2, model=4)`` mesh; every check compares
against the same computation on one device and records the output sharding. It runs one
part, named on the command line (see :func:`main`), so the test suite can run the parts side
by side. The report is one JSON object on the last line of stdout: ``{check: {"equal": bool,
"max_abs": float, "spec": str, "replicated": bool, "input_spec": str}}`` (part ``memory``:
``{pattern-scope: ratio}``).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import tvwjax


def _spec(x) -> str:
    s = x.sharding
    return str(s.spec) if isinstance(s, NamedSharding) else type(s).__name__


def _record(report: dict, name: str, sharded, single, inp, *, exact: bool = True) -> None:
    a, b = np.asarray(sharded), np.asarray(single)
    if a.dtype == np.bool_:
        diff = float(np.sum(a != b))
    else:
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
    report[name] = {
        "equal": bool(np.array_equal(a, b)) if exact else bool(diff <= 1e-5),
        "max_abs": diff,
        "spec": _spec(sharded),
        "replicated": bool(sharded.sharding.is_fully_replicated),
        "input_spec": _spec(inp),
    }


#: Global cases also checked with a traced sparsity inside a jitted function. Eagerly,
#: ``masks`` already passes the sparsity to the same compiled selection as an argument;
#: these cover the caller's jit around it: every kind of unit (elements, tile segments
#: with columns, tiles then 2:4) and the layer bounds.
JIT_CASES = ("EW-global", "TW2D-global", "TVW-global", "TVW-global-bounded")


def run(mesh: jax.sharding.Mesh, prefix: str, cases: str) -> dict:
    """Checks on ``mesh``, keyed ``prefix/...``: ``cases="layer"``: every layer-scope mask
    case, the prune transform and both compressed matmuls; ``"global"``: every global-scope
    mask case (those in JIT_CASES also with a traced sparsity); ``"few"``: one case per family."""
    assert cases in ("layer", "global", "few"), cases
    devices = jax.devices()
    one = jax.sharding.SingleDeviceSharding(devices[0])
    rng = np.random.default_rng(0)
    host = {"a": {"kernel": rng.standard_normal((64, 32)).astype(np.float32),
                  "bias": np.zeros(32, np.float32)},
            "b": {"kernel": rng.standard_normal((32, 64)).astype(np.float32) * 0.5,
                  "bias": np.zeros(64, np.float32)}}
    specs = {"a": {"kernel": P("data", "model"), "bias": P("model")},
             "b": {"kernel": P(None, "model"), "bias": P("model")}}
    sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), host, specs)
    single = jax.tree.map(lambda x: jax.device_put(x, one), host)
    report: dict = {}

    # -- masks, layer and global scope ----------------------------------------------------------
    bounded = {"layer_bounds": (0.6, 0.8)}
    mask_cases = [
        ("EW", tvwjax.EW(), 0.7, "layer", {}), ("TW", tvwjax.TW(tile=8), 0.5, "layer", {}),
        ("TVW", tvwjax.TVW(tile=8), 0.75, "layer", {}), ("NM", tvwjax.NM(), 0.5, "layer", {}),
        ("BW", tvwjax.BW(8, 4), 0.6, "layer", {}), ("VW", tvwjax.VW(16), 0.75, "layer", {}),
        ("TEW", tvwjax.TEW(8, delta=0.05), 0.7, "layer", {}),
        ("TW2D", tvwjax.TW(8, column_share=0.5), 0.75, "layer", {}),
        ("EW-override", tvwjax.EW(), 0.7, "layer", {"overrides": {"b/*": 0.5}}),
        ("EW-global", tvwjax.EW(), 0.7, "global", {}),
        ("TW-global", tvwjax.TW(tile=8), 0.6, "global", {}),
        ("TVW-global", tvwjax.TVW(tile=8), 0.8, "global", {}),
        ("BW-global", tvwjax.BW(8, 4), 0.6, "global", {}),
        ("VW-global", tvwjax.VW(16), 0.6, "global", {}),
        ("TEW-global", tvwjax.TEW(8, delta=0.05), 0.7, "global", {}),
        ("TW2D-global", tvwjax.TW(8, column_share=0.5), 0.75, "global", {}),
        ("EW-global-bounded", tvwjax.EW(), 0.7, "global", bounded),
        ("TVW-global-bounded", tvwjax.TVW(tile=8), 0.75, "global", bounded),
    ]
    if cases == "few":
        mask_cases = [c for c in mask_cases if c[0] in ("TVW", "TW-global", "EW-global")]
    else:
        mask_cases = [c for c in mask_cases if c[3] == cases]
    for name, pat, s, scope, kw in mask_cases:
        ms = tvwjax.masks(sharded, pat, s, scope=scope, **kw)
        m1 = tvwjax.masks(single, pat, s, scope=scope, **kw)
        for layer in ("a", "b"):
            _record(report, f"masks/{name}/{layer}", ms[layer]["kernel"], m1[layer]["kernel"],
                    sharded[layer]["kernel"])
        if scope != "global" or name not in JIT_CASES:
            continue
        # Traced sparsity (the schedule path) too, inside the caller's jit.
        f = jax.jit(lambda p, s_, pat=pat, scope=scope, kw=kw: tvwjax.masks(
            p, pat, s_, scope=scope, **kw))
        mt = f(sharded, jnp.float32(s))
        _record(report, f"masks-jit/{name}/a", mt["a"]["kernel"], m1["a"]["kernel"],
                sharded["a"]["kernel"])

    if cases == "global":
        return {f"{prefix}/{k}": v for k, v in report.items()}

    # -- the prune transform inside a jitted training step ---------------------------------------
    # Global scope (layer scope is covered by the masks checks; the step runs the same code).
    for name, pat, scope in [("TW-global", tvwjax.TW(tile=8), "global")]:
        tx = optax.chain(optax.adam(1e-2),
                         tvwjax.prune(pat, tvwjax.Polynomial(0.75, 1, 5, frequency=1),
                                      scope=scope))
        xs = rng.standard_normal((6, 16, 64)).astype(np.float32)

        def loss(p, x):
            h = jnp.tanh(x @ p["a"]["kernel"] + p["a"]["bias"])
            return jnp.mean((h @ p["b"]["kernel"] + p["b"]["bias"]) ** 2)

        @jax.jit
        def step(p, st, x, tx=tx, loss=loss):
            u, st = tx.update(jax.grad(loss)(p, x), st, p)
            return optax.apply_updates(p, u), st

        results = []
        for params in (sharded, single):
            st = tx.init(params)
            x_sharding = NamedSharding(mesh, P("data", None)) if params is sharded else one
            for i in range(6):
                params, st = step(params, st, jax.device_put(xs[i], x_sharding))
            results.append((params, tvwjax.get_masks(st)))
        (ps, mks), (p1, mk1) = results
        for layer in ("a", "b"):
            _record(report, f"prune/{name}/{layer}/params", ps[layer]["kernel"],
                    p1[layer]["kernel"], sharded[layer]["kernel"], exact=False)
            _record(report, f"prune/{name}/{layer}/masks", mks[layer]["kernel"],
                    mk1[layer]["kernel"], sharded[layer]["kernel"])

    # -- compressed matmul: tiles over "model", batch over "data" --------------------------------
    w = host["a"]["kernel"]
    mm_cases = [("TW", tvwjax.TW(tile=8, column_share=0.0), 0.5),
                ("TVW", tvwjax.TVW(tile=8, column_share=0.0), 0.75)]
    for name, pat, s in mm_cases[0 if cases == "layer" else 1:]:
        mask = np.asarray(pat.mask(jnp.abs(jnp.asarray(w)), s))
        cw = tvwjax.compress(w, mask, pat)
        spec = P("model", *([None] * (cw.values.ndim - 1)))
        cw_s = cw.replace(values=jax.device_put(cw.values, NamedSharding(mesh, spec)))
        cw_1 = cw.replace(values=jax.device_put(cw.values, one))
        x = rng.standard_normal((32, 64)).astype(np.float32)
        x_s = jax.device_put(x, NamedSharding(mesh, P("data", None)))
        y_s = jax.jit(tvwjax.matmul)(x_s, cw_s)
        y_1 = jax.jit(tvwjax.matmul)(jax.device_put(x, one), cw_1)
        _record(report, f"matmul/{name}", y_s, y_1, cw_s.values, exact=False)
        _record(report, f"matmul/{name}/vs-dense", y_s, x @ np.where(mask, w, 0), x_s,
                exact=False)

    return {f"{prefix}/{k}": v for k, v in report.items()}


def memory(mesh: jax.sharding.Mesh) -> dict:
    """Per-device temp bytes of the compiled mask-update step, as a multiple of the
    per-device parameter bytes: ``{pattern-scope: ratio}`` (kernels 512x1024 and 1024x512,
    split over "model" as in tensor parallelism)."""
    shapes = {"w1": ((512, 1024), P(None, "model")), "w2": ((1024, 512), P("model", None))}
    params = {k: {"kernel": jax.ShapeDtypeStruct(shape, jnp.float32,
                                                 sharding=NamedSharding(mesh, spec))}
              for k, (shape, spec) in shapes.items()}
    per_device = sum(4 * a * b for (a, b), _ in shapes.values()) / mesh.shape["model"]
    out = {}
    for name, pat, s, scopes in [("EW", tvwjax.EW(), 0.75, ("layer", "global")),
                                 ("TW", tvwjax.TW(128), 0.75, ("global",)),
                                 ("NM", tvwjax.NM(), 0.5, ("layer",)),
                                 ("TVW", tvwjax.TVW(128), 0.75, ("layer", "global"))]:
        for scope in scopes:
            tx = optax.chain(optax.sgd(1e-3), tvwjax.prune(pat, tvwjax.OneShot(s), scope=scope))

            def step(p, st, g, tx=tx):
                u, st = tx.update(g, st, p)
                return optax.apply_updates(p, u), st

            compiled = jax.jit(step).lower(params, jax.eval_shape(tx.init, params),
                                           params).compile()
            out[f"{name}-{scope}"] = compiled.memory_analysis().temp_size_in_bytes / per_device
    return out


PARTS = ("explicit-layer", "explicit-global", "auto", "memory")


def main(part: str) -> None:
    """Run one part: ``explicit-layer`` / ``explicit-global`` (every check, split by scope, on
    an explicit-axes mesh), ``auto`` (one case per family on an auto-axes mesh) or ``memory``
    (the mask-update step's temp bytes on the explicit mesh)."""
    assert len(jax.devices()) == 8, f"expected 8 simulated devices, got {len(jax.devices())}"
    kind = jax.sharding.AxisType.Auto if part == "auto" else jax.sharding.AxisType.Explicit
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(kind,) * 2)
    if part == "memory":
        report = memory(mesh)
    elif part == "auto":
        report = run(mesh, "auto", "few")
    else:
        report = run(mesh, "explicit", part.split("-")[1])
    print(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in PARTS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(PARTS)}}}")
    main(sys.argv[1])
