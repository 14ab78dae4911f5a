"""Builds of the CPU TW kernel against each other, in one process (a development tool).

``python -m benchmarks.kernel_ab A=old/_tw_cpu.so B=new/_tw_cpu.so [--model] [--repeats R]``

On a shared VM the same binary measures 10-20% apart from one minute to the next, more
than most kernel changes are worth; builds timed in separate processes cannot be told
apart. This loads every given build of the extension (``tvwjax._tw_cpu``, e.g. copied out
of ``build/`` before and after a change) into this one process, registers each under an
FFI target of its own, and times them in interleaved rounds, so load changes hit all of
them alike. Workloads: BERT-base's layer shapes at 1024 rows (``768x768``, ``768x3072``,
``3072x768``, TW 75%, and ``3072x768`` at 99%, which is nearly all reading x and writing
the output), or the layers of ``--shape`` at ``--rows`` rows,
one jitted layer per call with its operands warm; ``--model``: the BERT-base encoder of
:mod:`benchmarks.model` end to end (dense first, for the ratio); ``--chain``: 4096 x 4096
at ``--rows`` rows (default 1), TW 75% and 90%, 8 layers per jitted call after a cache
flush, as :mod:`benchmarks.cpu_kernel` times them (dense ``(W^T x^T)^T`` first, for the
ratio).
Prints medians; writes nothing. Each build's own ``last_call()`` report shows that it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import interleaved_medians
from tvwjax import cpu_kernel
from tvwjax.formats import compress
from tvwjax.patterns import TW

SHAPES = [(768, 768, 0.75), (768, 3072, 0.75), (3072, 768, 0.75), (3072, 768, 0.99)]


def load_build(tag: str, path: str) -> tuple[str, Any]:
    """Import the extension at ``path`` as a module of its own and register its handler as
    the FFI target ``tvwjax_tw_matmul_cpu_ab_<tag>``; return ``(target, module)``."""
    spec = importlib.util.spec_from_file_location("_tw_cpu", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{tag}: {path} is not an extension module (expected a .so)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target = f"{cpu_kernel.TARGET}_ab_{tag}"
    jax.ffi.register_ffi_target(target, module.registrations()[cpu_kernel.TARGET],
                                platform="cpu")
    return target, module


@contextlib.contextmanager
def tracing_with(target: str) -> Iterator[None]:
    """Within the block, :func:`tvwjax.cpu_kernel.tw_matmul_cpu` traces to ``target`` (the
    target name is read when a program is traced; compiled programs keep theirs)."""
    saved = cpu_kernel.TARGET
    cpu_kernel.TARGET = target
    cpu_kernel._batched.cache_clear()
    try:
        yield
    finally:
        cpu_kernel.TARGET = saved
        cpu_kernel._batched.cache_clear()


def bound_for(target: str, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn(*args)`` jitted with its TW products traced to ``target``, compiled and run once;
    returns the no-argument call to time.

    A fresh wrapper per call: ``jax.jit`` caches traces by function, so jitting the same
    ``fn`` again for another build would reuse the first build's trace and time it twice.
    """
    with tracing_with(target):
        f = jax.jit(lambda *a: fn(*a))
        jax.block_until_ready(f(*args))
    return functools.partial(f, *args)


def medians(fns: dict[str, Callable[[], Any]], repeats: int,
            between: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median milliseconds of each callable: :func:`benchmarks._timing.interleaved_medians`
    (rounds in alternating order) without a time budget."""
    med = interleaved_medians(fns, repeats=repeats, budget_s=float("inf"), between=between)
    return {k: v * 1e3 for k, v in med.items()}


def _layers(targets: dict[str, str], repeats: int, m: int = 1024,
            shapes: list[tuple[int, int, float]] | None = None, dtype: str = "float32") -> None:
    for k, n, s in shapes or SHAPES:
        w = jax.random.normal(jax.random.key(0), (k, n), dtype)
        x = jax.random.normal(jax.random.key(1), (m, k), dtype)
        cw = compress(w, np.asarray(TW().mask(jnp.abs(w), s)), TW())
        fns = {tag: bound_for(target, lambda x, cw: cpu_kernel.tw_matmul_cpu(x, cw) + 1.0,
                              x, cw)
               for tag, target in targets.items()}
        med = medians(fns, repeats)
        times = "  ".join(f"{t} {v:.3f} ms" for t, v in med.items())
        print(f"{m}x{k}x{n} {dtype} TW {s:.0%}: {times}", flush=True)


def _model(targets: dict[str, str], repeats: int) -> None:
    from benchmarks.model import Encoder
    from tvwjax.masking import masks
    from tvwjax.nn import compress_params

    model = Encoder()
    x = jax.random.normal(jax.random.key(1), (8, 128, 768), jnp.float32)
    params = model.init(jax.random.key(0), x)["params"]
    compressed = compress_params(params, masks(params, TW(), 0.75), TW())
    fns = {"dense": functools.partial(jax.jit(model.apply), {"params": params}, x)}
    for tag, target in targets.items():
        fns[tag] = bound_for(target, model.apply, {"params": compressed}, x)
    med = medians(fns, repeats)
    print("BERT-base TW 75%, 8 x 128 tokens: " + "  ".join(
        f"{t} {v:.1f} ms ({med['dense'] / v:.2f}x)" for t, v in med.items()), flush=True)


def _chain(targets: dict[str, str], repeats: int, m: int = 1) -> None:
    from benchmarks._timing import cache_flusher, layer_chain

    k = n = 4096
    layers = 8
    flush = cache_flusher()
    ws = [np.random.default_rng(i).standard_normal((k, n)).astype(np.float32) / np.sqrt(k)
          for i in range(layers)]
    wts = [jnp.asarray(w.T) for w in ws]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), jnp.float32)
    b = jnp.zeros((n,), jnp.float32)
    dense = layer_chain(lambda x, wt: (wt @ x.T).T)
    for s in (0.75, 0.9):
        cws = [compress(jnp.asarray(w), np.asarray(TW().mask(jnp.abs(jnp.asarray(w)), s)), TW())
               for w in ws]
        fns = {"dense": functools.partial(dense, x, wts, b)}
        for tag, target in targets.items():
            fns[tag] = bound_for(target, layer_chain(cpu_kernel.tw_matmul_cpu), x, cws, b)
        med = medians(fns, repeats, between=flush)
        print(f"M={m} 4096x4096 TW {s:.0%}, per layer: " + "  ".join(
            f"{t} {v / layers:.3f} ms ({med['dense'] / v:.2f}x)" for t, v in med.items()),
            flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse ``TAG=path`` builds and options; run the layer or model comparison."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_ab", description=__doc__
                                .splitlines()[0])
    p.add_argument("builds", nargs="+", metavar="TAG=PATH", help="extension builds to compare")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--model", action="store_true", help="BERT-base end to end")
    mode.add_argument("--chain", action="store_true",
                      help="4096 x 4096, 8 layers per call after a cache flush")
    p.add_argument("--rows", type=int, default=None,
                   help="rows of x (default: 1024 in layer mode, 1 for --chain)")
    p.add_argument("--shape", action="append", default=None, metavar="KxN@S",
                   help="layer shape and sparsity, e.g. 4096x4096@0.9 (layer mode; repeatable; "
                        "default: BERT-base's)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="x and weights (layer mode)")
    p.add_argument("--isa", default=None,
                   help="instruction-set variant every build runs (default: the fastest)")
    p.add_argument("--repeats", type=int, default=None,
                   help="rounds (default: 40 per layer, 9 for --model, 15 for --chain)")
    args = p.parse_args(argv)
    targets, modules = {}, {}
    for spec in args.builds:
        tag, sep, path = spec.partition("=")
        if not sep or not tag.isidentifier() or tag in targets:
            raise SystemExit(f"expected distinct TAG=PATH with TAG a name, got {spec!r}")
        targets[tag], modules[tag] = load_build(tag, path)
        if args.isa:
            modules[tag].set_isa(args.isa)
    if args.model:
        _model(targets, args.repeats or 9)
    elif args.chain:
        _chain(targets, args.repeats or 15, args.rows or 1)
    else:
        shapes = None
        if args.shape:
            try:
                shapes = [(int(kn.split("x")[0]), int(kn.split("x")[1]), float(sp))
                          for kn, _, sp in (v.partition("@") for v in args.shape)]
            except (ValueError, IndexError):
                raise SystemExit(
                    f"--shape expects KxN@S, e.g. 4096x4096@0.9; got {args.shape}") from None
        _layers(targets, args.repeats or 40, args.rows or 1024, shapes, args.dtype)
    print("last call (us): " + ", ".join(
        f"{t} {m.last_call()['call_us']:.0f}" for t, m in modules.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
