"""Time to derive masks for a BERT-base-shaped parameter tree, against one training step.

The tree has 12 layers of four 768x768 kernels, one 768x3072 and one 3072x768 (85M
weights, the linear layers of BERT-base). The baseline, measured in the same run, is one
jit-compiled forward+backward of the same stack of dense layers (GELU between them) at
8 x 128 tokens. Both are jit-compiled and timed after warm-up (medians, interleaved); the
first call including compilation is reported too. Target (issue 2): TVW masks with global
scope in at most the time of one forward+backward (ratio <= 1.0).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks._timing import interleaved_medians, machine_info, md_table, write_results
from tvwjax.masking import masks as make_masks
from tvwjax.patterns import EW, NM, TVW, TW, Pattern

SHAPES = [(768, 768)] * 4 + [(768, 3072), (3072, 768)]


def bert_tree(layers: int, key: jax.Array) -> dict:
    """``{layer_i: {lin_j: {"kernel": ...}}}`` with BERT-base's linear shapes."""
    tree = {}
    for i in range(layers):
        layer = {}
        for j, shape in enumerate(SHAPES):
            key, sub = jax.random.split(key)
            layer[f"lin_{j}"] = {"kernel": jax.random.normal(sub, shape) / shape[0] ** 0.5}
        tree[f"layer_{i}"] = layer
    return tree


def forward(tree: dict, x: jax.Array) -> jax.Array:
    """The dense stack: every kernel in order, GELU between them."""
    for layer in tree.values():
        for lin in layer.values():
            x = jax.nn.gelu(x @ lin["kernel"])
    return x


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m benchmarks masks``."""
    p.add_argument("--layers", type=int, default=12, help="encoder layers (default 12)")
    p.add_argument("--tokens", type=int, default=8 * 128, help="tokens per step (8 x 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write ``<out>/bench_masks.{json,md}``."""
    layers = 2 if args.quick else args.layers
    tree = bert_tree(layers, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (args.tokens, 768))
    step = jax.jit(jax.grad(lambda t, x: jnp.sum(forward(t, x) ** 2)))

    cases: list[tuple[str, Pattern, float, str]] = [
        ("TVW 75%", TVW(128), 0.75, "global"),
        ("TVW 75%", TVW(128), 0.75, "layer"),
        ("TW 75%", TW(128), 0.75, "global"),
        ("2:4", NM(), 0.5, "layer"),
        ("EW 75%", EW(), 0.75, "global"),
    ]
    fns = {"fwd+bwd (dense, 8x128 tokens)": lambda: step(tree, x)}
    first_call = {}
    for name, pattern, s, scope in cases:
        f = jax.jit(lambda t, p=pattern, s=s, scope=scope: make_masks(t, p, s, scope=scope))
        label = f"{name} masks, {scope}"
        t0 = time.perf_counter()
        jax.block_until_ready(f(tree))
        first_call[label] = time.perf_counter() - t0
        fns[label] = lambda f=f: f(tree)
    info = machine_info()
    med = interleaved_medians(fns, repeats=args.repeats, budget_s=300)
    base = med["fwd+bwd (dense, 8x128 tokens)"]
    rows = [[k, f"{v * 1e3:.1f}", f"{v / base:.2f}", f"{first_call.get(k, float('nan')):.1f}"]
            for k, v in med.items()]
    md = (f"BERT-base-shaped tree ({layers} layers, {sum(a * b for a, b in SHAPES) * layers:,} "
          f"weights); ratio = time / one dense fwd+bwd at {args.tokens} tokens, same run.\n\n"
          + md_table(["computation", "median ms", "ratio to fwd+bwd", "first call s (compile)"],
                     rows))
    payload = {"layers": layers, "tokens": args.tokens, "median_s": med,
               "ratio_to_fwd_bwd": {k: v / base for k, v in med.items()},
               "first_call_s": first_call, "machine": info}
    write_results(args.out, "bench_masks" + ("_quick" if args.quick else ""), payload, md)
    print(md)
    return 0
