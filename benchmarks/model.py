"""Transformer encoders end to end under jit: dense vs TW 75% vs TVW 75%.

``--config bert`` (default): BERT-base shapes, 12 layers, hidden 768, FFN 3072, 12 heads,
128 tokens, batch 8 (``--quick``: 2 layers, batch 2). ``--config minilm``: MiniLM-L6 shapes,
6 layers, hidden 384, FFN 1536, 12 heads, 32 tokens, batch 64 (``--batch`` overrides).
Every linear layer is a :class:`tvwjax.nn.SparseDense`; masks come from
:func:`tvwjax.masks` on random weights (per layer), compressed by
:func:`tvwjax.nn.compress_params`. The ``+keep_faster`` rows keep each layer compressed only
where :func:`tvwjax.nn.keep_faster` measured it faster than dense at this batch.
"""

from __future__ import annotations

import argparse
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import tvwjax
from benchmarks._timing import interleaved_medians, machine_info, md_table, write_results
from tvwjax.masking import apply_masks
from tvwjax.masking import masks as make_masks
from tvwjax.nn import SparseDense, compress_params, keep_faster
from tvwjax.patterns import TVW, TW


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (BERT) with sparse-capable linear layers."""

    hidden: int
    heads: int
    ffn: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        b, t, d = h.shape
        hd = d // self.heads
        q, k, v = (SparseDense(d, name=n)(h).reshape(b, t, self.heads, hd)
                   for n in ("query", "key", "value"))
        att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd), axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d)
        h = nn.LayerNorm(name="ln_att")(h + SparseDense(d, name="attn_out")(ctx))
        f = SparseDense(d, name="ffn_out")(nn.gelu(SparseDense(self.ffn, name="ffn_in")(h)))
        return nn.LayerNorm(name="ln_ffn")(h + f)


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` over already-embedded tokens."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        for i in range(self.layers):
            h = EncoderLayer(self.hidden, self.heads, self.ffn, name=f"layer_{i}")(h)
        return h


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI options of ``model``."""
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--sparsity", type=float, default=0.75)
    p.add_argument("--config", choices=("bert", "minilm"), default="bert")
    p.add_argument("--batch", type=int, default=None, help="override the batch size")


def _kernel_bytes(params) -> int:
    return int(sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(params)))


def run(args: argparse.Namespace) -> int:
    """Time the encoder; write ``results/bench_model.{json,md}``."""
    if args.config == "minilm":
        cfg = dict(layers=6, batch=64, hidden=384, ffn=1536, tokens=32)
    else:
        cfg = dict(layers=12, batch=8, hidden=768, ffn=3072, tokens=128)
    if args.quick:
        cfg.update(layers=2, batch=min(cfg["batch"], 2))
    if args.batch:
        cfg["batch"] = args.batch
    tokens, s, hidden = cfg["tokens"], args.sparsity, cfg["hidden"]
    info = machine_info()
    model = Encoder(layers=cfg["layers"], hidden=hidden, ffn=cfg["ffn"])
    x = jax.random.normal(jax.random.key(1), (cfg["batch"], tokens, hidden), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    variants = {"dense": params}
    storage: dict[str, int | None] = {"dense": None}  # tvw_cpu: stored as tvw
    masked = {}
    for name, pat in (("tw", TW()), ("tvw", TVW())):
        t0 = time.perf_counter()
        m = make_masks(params, pat, s)
        variants[name] = compress_params(params, m, pat)
        masked[name] = apply_masks(params, m)
        if name == "tvw":  # how TVW runs on a CPU: decoded once at load to its TW part
            variants["tvw_cpu"] = compress_params(params, m, pat, decode_nm=True)
            masked["tvw_cpu"] = masked[name]
        kb = [w.storage_bytes() for w in jax.tree.leaves(
            variants[name], is_leaf=lambda v: hasattr(v, "storage_bytes"))
            if hasattr(w, "storage_bytes")]
        storage[name] = int(sum(kb))
        if name == "tvw":
            storage["tvw_cpu"] = storage[name]
        print(f"{name}: masks + compress {time.perf_counter() - t0:.1f} s", flush=True)
    for name in ("tw", "tvw_cpu"):
        chosen, report = keep_faster(params, variants[name], rows=cfg["batch"] * tokens)
        print(f"{name}+keep_faster: {len(report.compressed)} of {len(report)} layers kept "
              "compressed", flush=True)
        variants[f"{name}+keep_faster"], masked[f"{name}+keep_faster"] = chosen, masked[name]
        storage[f"{name}+keep_faster"] = int(sum(
            w.storage_bytes() if hasattr(w, "storage_bytes") else w.nbytes
            for w in _kernels_and_compressed(chosen)))
    dense_kernel_bytes = _kernel_bytes(_kernels(params))
    apply = jax.jit(model.apply)
    # Sanity: each compressed model computes its masked dense model's output.
    err = {k: float(jnp.max(jnp.abs(apply({"params": variants[k]}, x)
                                    - apply({"params": masked[k]}, x)))) for k in masked}
    print(f"max |compressed - masked dense| = {err}", flush=True)
    fns = {k: functools.partial(apply, {"params": p}, x) for k, p in variants.items()}
    med = interleaved_medians(fns, repeats=args.repeats, budget_s=300.0)
    rows, records = [], []
    for k, t in med.items():
        ratio = med["dense"] / t
        frac = None if storage[k] is None else storage[k] / dense_kernel_bytes
        records.append(dict(variant=k, median_ms=round(t * 1e3, 2),
                            speedup_vs_dense=round(ratio, 3), kernel_storage_fraction=frac,
                            max_abs_err_vs_masked_dense=err.get(k)))
        rows.append([k, f"{t * 1e3:.1f}", f"{ratio:.2f}x",
                     "1.000" if frac is None else f"{frac:.3f}"])
    payload = {"machine": info, "config": dict(cfg, heads=12, sparsity=s,
                                               name=args.config),
               "records": records}
    title = "BERT-base" if args.config == "bert" else "MiniLM-L6"
    md = (f"# {title}-shaped encoder ({cfg['layers']} layers, batch {cfg['batch']} x "
          f"{tokens} tokens), float32, jit, end to end\n\nSparsity {s:.0%} on every linear "
          f"layer (per-layer magnitude masks); the CPU TW kernel: "
          f"{tvwjax.backends()['tile_formats_cpu']}. Load average {info['loadavg_start']} at "
          f"start.\n\n" + md_table(["model", "median ms", "speed-up", "kernel bytes / dense"],
                                   rows))
    stem = "bench_model" if args.config == "bert" else f"bench_model_minilm_b{cfg['batch']}"
    write_results(args.out, stem, payload, md)
    print(md)
    return 0


def _kernels_and_compressed(params) -> list:
    """Every kernel leaf, dense or compressed (for the stored bytes of a mixed tree)."""
    flat = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda v: hasattr(v, "storage_bytes"))[0]
    return [v for k, v in flat if "kernel" in jax.tree_util.keystr(k)]


def _kernels(params) -> dict[str, jax.Array]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(k): v for k, v in flat if "kernel" in jax.tree_util.keystr(k)}
