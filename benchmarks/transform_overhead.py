"""Overhead of ``tvwjax.prune`` on a training step that does not update the masks.

A BERT-base-shaped MLP stack (:func:`benchmarks.masks.bert_tree`: per layer four 768x768
matrices, 768x3072 and 3072x768; 12 layers, 85M weights) trained on 8 x 128 tokens with Adam.
The same jitted step (buffers donated) is timed with ``optax.adam`` alone and with
``optax.chain(adam, prune(TVW(), ...))`` whose schedule does not update the masks at that
step; the two are interleaved and the ratio of the medians is reported from the same run. A
third timing, a step on which the masks *are* recomputed, shows that ``lax.cond`` skips the
mask computation on the other steps.

Run: ``python -m benchmarks transform_overhead [--layers 12] [--repeats 7]`` (``--quick``: 2
layers); writes ``<out>/transform_overhead.{json,md}``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from benchmarks._timing import interleaved_medians, machine_info, write_results
from benchmarks.masks import bert_tree
from tvwjax.patterns import TVW
from tvwjax.schedules import OneShot
from tvwjax.transform import PruneState, prune

#: The masks are computed at this step only: every other step is a non-update step.
FAR = 1_000_000


def loss_fn(params: dict, x: jax.Array) -> jax.Array:
    """A residual MLP stack through every matrix; mean squared output."""
    for blk in params.values():
        q, k, v, o, ff1, ff2 = (lin["kernel"] for lin in blk.values())
        h = x
        for w in (q, k, v, o):
            h = jnp.tanh(h @ w)
        x = x + h
        x = x + jax.nn.gelu(x @ ff1) @ ff2
    return jnp.mean(x ** 2)


def make_step(tx: optax.GradientTransformation):
    """Jitted ``step(params, opt_state, x)`` with donated params and state."""

    def step(params, opt_state, x):
        grads = jax.grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def _set_count(state, count: int):
    """The chain state with the PruneState's step counter set to ``count``."""
    return tuple(s._replace(count=jnp.asarray(count, jnp.int32)) if isinstance(s, PruneState)
                 else s for s in state)


def _stepper(step, params, state, x, count: int | None = None):
    """A no-argument callable that runs one training step, carrying params and state along
    (the buffers are donated); ``count`` resets the prune counter before every step."""
    carry = [params, state]

    def f():
        st = carry[1] if count is None else _set_count(carry[1], count)
        carry[:] = step(carry[0], st, x)
        return carry

    f.carry = carry
    return f


def measure(layers: int = 12, repeats: int = 7, tokens: tuple[int, int] = (8, 128)) -> dict:
    """Median step times without / with the transform (non-update step) and their ratio."""
    x = jax.random.normal(jax.random.key(1), (tokens[0] * tokens[1], 768))
    base_tx = optax.adam(1e-4)
    prune_tx = optax.chain(optax.adam(1e-4), prune(TVW(tile=128), OneShot(0.75, step=FAR)))
    pb = bert_tree(layers, jax.random.key(0))
    pp = bert_tree(layers, jax.random.key(0))
    n_weights = sum(p.size for p in jax.tree.leaves(pb))
    step_with = make_step(prune_tx)
    with_ = _stepper(step_with, pp, prune_tx.init(pp), x)
    # interleaved, so that load drift hits both alike (compiled and warmed up first)
    med = interleaved_medians({"without": _stepper(make_step(base_tx), pb, base_tx.init(pb), x),
                               "with": with_}, repeats=repeats, warmup=1, budget_s=3600.0)
    # a step that does recompute the masks (same compiled function, counter set to FAR)
    update = interleaved_medians({"update": _stepper(step_with, *with_.carry, x, count=FAR)},
                                 repeats=2, warmup=0, budget_s=3600.0)["update"]
    return {"layers": layers, "weights": n_weights, "tokens": list(tokens),
            "repeats": repeats, "pattern": "TVW(tile=128), 75%",
            "step_s_without": med["without"], "step_s_with": med["with"],
            "ratio": med["with"] / med["without"], "step_s_mask_update": update,
            "devices": str(jax.devices()), "machine": machine_info()}


def to_markdown(r: dict) -> str:
    """One-table summary."""
    return (
        f"BERT-base-shaped MLP stack: {r['layers']} layers x (4 x 768x768, 768x3072, "
        f"3072x768) = {r['weights'] / 1e6:.1f}M weights, {r['tokens'][0]}x{r['tokens'][1]} "
        f"tokens, Adam, jit with donated buffers, {r['machine']['backend']}; medians of "
        f"{r['repeats']} interleaved steps.\n\n"
        "| step | time (s) | ratio |\n|---|---:|---:|\n"
        f"| adam | {r['step_s_without']:.3f} | 1.00 |\n"
        f"| chain(adam, prune(TVW)), no mask update | {r['step_s_with']:.3f} | "
        f"{r['ratio']:.3f} |\n"
        f"| chain(adam, prune(TVW)), mask update step | {r['step_s_mask_update']:.3f} | "
        f"{r['step_s_mask_update'] / r['step_s_without']:.2f} |\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m benchmarks transform_overhead``."""
    p.add_argument("--layers", type=int, default=12, help="layers of the stack (default 12)")
    p.add_argument("--repeats", type=int, default=7, help="timed steps of each (default 7)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write ``<out>/transform_overhead.{json,md}``."""
    r = measure(2 if args.quick else args.layers, args.repeats)
    md = to_markdown(r)
    write_results(args.out, "transform_overhead" + ("_quick" if args.quick else ""), r, md)
    print(md)
    return 0
