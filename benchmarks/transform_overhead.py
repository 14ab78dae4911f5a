"""Overhead of ``tvwjax.prune`` on a training step that does not update the masks.

A BERT-base-shaped MLP stack (per layer: four 768x768 matrices, 768x3072 and 3072x768;
12 layers, 85M weights) trained on 8 x 128 tokens with Adam. The same jitted step (buffers
donated) is timed with ``optax.adam`` alone and with ``optax.chain(adam, prune(TVW(), ...))``
whose schedule does not update the masks at that step; the two are interleaved and the
ratio of the medians is reported from the same run. A third timing, a step on which the
masks *are* recomputed, shows that ``lax.cond`` skips the mask computation on the other
steps.

Run: ``python benchmarks/transform_overhead.py [--layers 12] [--repeats 7]``; writes
``results/transform_overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

if __package__ in (None, ""):  # run as a script from a checkout: make tvwjax importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvwjax.patterns import TVW  # noqa: E402
from tvwjax.schedules import OneShot  # noqa: E402
from tvwjax.transform import PruneState, prune  # noqa: E402

D, FF = 768, 3072


def make_params(layers: int, seed: int = 0) -> dict:
    """``layers`` BERT-base-shaped blocks of kernels (``q, k, v, o, ff1, ff2``)."""
    keys = iter(jax.random.split(jax.random.key(seed), 6 * layers))
    shapes = {"q": (D, D), "k": (D, D), "v": (D, D), "o": (D, D), "ff1": (D, FF), "ff2": (FF, D)}
    return {f"layer{i}": {name: {"kernel": jax.random.normal(next(keys), s) * s[0] ** -0.5}
                          for name, s in shapes.items()} for i in range(layers)}


def loss_fn(params: dict, x: jax.Array) -> jax.Array:
    """A residual MLP stack through every matrix; mean squared output."""
    for blk in params.values():
        h = x
        for name in ("q", "k", "v", "o"):
            h = jnp.tanh(h @ blk[name]["kernel"])
        x = x + h
        x = x + jax.nn.gelu(x @ blk["ff1"]["kernel"]) @ blk["ff2"]["kernel"]
    return jnp.mean(x ** 2)


def make_step(tx: optax.GradientTransformation):
    """Jitted ``step(params, opt_state, x)`` with donated params and state."""

    def step(params, opt_state, x):
        grads = jax.grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def _time(step, params, state, x):
    t = time.perf_counter()
    params, state = step(params, state, x)
    jax.block_until_ready((params, state))
    return time.perf_counter() - t, params, state


def _set_count(state, count: int):
    """The chain state with the PruneState's step counter set to ``count``."""
    return tuple(s._replace(count=jnp.asarray(count, jnp.int32)) if isinstance(s, PruneState)
                 else s for s in state)


def run(layers: int = 12, repeats: int = 7, tokens: tuple[int, int] = (8, 128)) -> dict:
    """Median step times without / with the transform (non-update step) and their ratio."""
    x = jax.random.normal(jax.random.key(1), (tokens[0] * tokens[1], D))
    base_tx = optax.adam(1e-4)
    # The masks are computed at step 1_000_000 only: every timed step is a non-update step.
    far = 1_000_000
    prune_tx = optax.chain(optax.adam(1e-4), prune(TVW(tile=128), OneShot(0.75, step=far)))
    base, pruned = make_step(base_tx), make_step(prune_tx)

    pb = make_params(layers)
    sb = base_tx.init(pb)
    pp = make_params(layers)
    sp = prune_tx.init(pp)
    n_weights = sum(p.size for p in jax.tree.leaves(pb))
    # compile + warm up
    for _ in range(2):
        _, pb, sb = _time(base, pb, sb, x)
        _, pp, sp = _time(pruned, pp, sp, x)
    tb, tp = [], []
    for _ in range(repeats):  # interleaved, so that load drift hits both alike
        dt, pb, sb = _time(base, pb, sb, x)
        tb.append(dt)
        dt, pp, sp = _time(pruned, pp, sp, x)
        tp.append(dt)
    # a step that does recompute the masks (same compiled function, counter set to `far`)
    tu = []
    for _ in range(2):
        dt, pp, sp = _time(pruned, pp, _set_count(sp, far), x)
        tu.append(dt)
    mb, mp = statistics.median(tb), statistics.median(tp)
    return {"layers": layers, "weights": n_weights, "tokens": list(tokens),
            "repeats": repeats, "pattern": "TVW(tile=128), 75%",
            "step_s_without": mb, "step_s_with": mp, "ratio": mp / mb,
            "step_s_mask_update": statistics.median(tu),
            "all_without": tb, "all_with": tp, "all_mask_update": tu,
            "backend": jax.default_backend(), "jax": jax.__version__,
            "devices": str(jax.devices())}


def to_markdown(r: dict) -> str:
    """One-table summary."""
    return (
        f"BERT-base-shaped MLP stack: {r['layers']} layers x (4 x 768x768, 768x3072, "
        f"3072x768) = {r['weights'] / 1e6:.1f}M weights, {r['tokens'][0]}x{r['tokens'][1]} "
        f"tokens, Adam, jit with donated buffers, {r['backend']}; medians of {r['repeats']} "
        "interleaved steps.\n\n"
        "| step | time (s) | ratio |\n|---|---:|---:|\n"
        f"| adam | {r['step_s_without']:.3f} | 1.00 |\n"
        f"| chain(adam, prune(TVW)), no mask update | {r['step_s_with']:.3f} | "
        f"{r['ratio']:.3f} |\n"
        f"| chain(adam, prune(TVW)), mask update step | {r['step_s_mask_update']:.3f} | "
        f"{r['step_s_mask_update'] / r['step_s_without']:.2f} |\n")


def main(argv=None) -> dict:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = ap.parse_args(argv)
    r = run(args.layers, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transform_overhead.json").write_text(json.dumps(r, indent=1))
    (args.out / "transform_overhead.md").write_text(to_markdown(r))
    print(to_markdown(r))
    return r


if __name__ == "__main__":
    main()
