"""The CPU tile-wise (TW) matmul kernel: ``y = x @ W`` through an XLA FFI custom call.

The kernel (``csrc/``, built by ``pip install`` with CMake + nanobind into the extension
``tvwjax._tw_cpu``) computes the TW product directly on the compressed layout of
:mod:`pallas_kernels.layout`, with no gathered copy of ``x`` in memory: for up to 32 rows
of ``x`` each tile's kept rows are gathered through the row table *while packing* the
GEMM's activation panels; beyond that the micro-kernel broadcasts each kept row's
activations straight from ``x`` (float32) through the row table, or, for bfloat16 from 48
rows, from ``x^T`` converted to float32 once per call; a register-blocked micro-kernel
(AVX-512, AVX2+FMA or SSE2, picked at run time for this CPU) accumulates in float32,
XLA's intra-op thread pool runs tiles in parallel, and each tile's columns are written to
their output columns. ``M == 1`` streams every tile's compact
rows once (a GEMV, memory-bound).

* :func:`tw_matmul_cpu` -- the product, usable under ``jit``, ``vmap`` and ``grad`` (the
  backward pass is plain ``jnp``/XLA: gathers and batched products);
* :func:`available`, :func:`reason`, :func:`report` -- whether the extension loaded, and if
  not why (``tvwjax.matmul`` then runs its XLA path);
* :func:`unsupported` -- why a given product cannot run on the kernel (``None`` if it can).

Set ``TVWJAX_CPU_KERNEL=0`` in the environment to disable the kernel (XLA path everywhere).

Threads: a call splits its tiles between the thread XLA runs it on and tasks on XLA's
intra-op pool. XLA counts a custom call as 0 FLOPs and runs a jitted program of under 1000
FLOPs synchronously on the calling Python thread, so ``jax.jit(tw_matmul_cpu)`` alone runs
there; on a small VM the pool thread it wakes can land on the caller's core and the two then
share it (measured on a 2-vCPU VM: about 2x slower at M = 1). Anything else in the program (a
bias, an activation: every layer of a model) makes XLA run it on its executor thread, where
the call uses every core.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.tile_vjp import tile_matmul_vjp
from tvwjax.errors import ConfigError, DTypeError, ShapeError
from tvwjax.formats import StaticArray
from tvwjax.formats.tiles import TileFormat

Array = jax.Array

TARGET = "tvwjax_tw_matmul_cpu"
#: dtypes the kernel computes in; float16 inputs are computed in float32 and rounded back.
KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
ACCEPTED_DTYPES = KERNEL_DTYPES + (jnp.dtype(jnp.float16),)


def _load() -> tuple[Any, str]:
    if os.environ.get("TVWJAX_CPU_KERNEL", "1").strip().lower() in ("0", "false", "off", "no"):
        return None, "disabled by TVWJAX_CPU_KERNEL=0"
    try:
        from tvwjax import _tw_cpu  # built by `pip install` from csrc/ (CMakeLists.txt)
    except ImportError as e:
        return None, (f"extension tvwjax._tw_cpu not built or not importable ({e}); "
                      "reinstall with `pip install -e .` to build it")
    try:
        for name, capsule in _tw_cpu.registrations().items():
            jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    except Exception as e:  # pragma: no cover - a jaxlib without this FFI API
        return None, f"registering the FFI target failed: {type(e).__name__}: {e}"
    return _tw_cpu, ""


_EXT, _REASON = _load()


def available() -> bool:
    """Whether the compiled kernel loaded and is registered with XLA."""
    return _EXT is not None


def reason() -> str:
    """Why the kernel is unavailable (``""`` when it is available)."""
    return _REASON


def isa() -> str | None:
    """The instruction-set variant the kernel runs (``"avx512"``, ``"avx2"`` or
    ``"generic"``), ``None`` when unavailable."""
    return None if _EXT is None else str(_EXT.isa())


def report() -> dict[str, Any]:
    """Which CPU TW kernel runs: ``{"kernel": "ffi" | "xla", "isa", "supported_isas",
    "reason", "last_call"}`` (``"xla"``: the extension is unavailable, ``reason`` says why;
    ``last_call``: XLA's intra-op pool size seen by the last call (``pool_threads``), the
    workers it used, how many of its work items ran on pool threads rather than the calling
    one (``helper_items``), when the first of those began (``helper_start_us``, microseconds
    after the call began; -1 when none ran) and the call's duration (``call_us``))."""
    if _EXT is None:
        return {"kernel": "xla", "isa": None, "supported_isas": [], "reason": _REASON,
                "last_call": None}
    return {"kernel": "ffi", "isa": isa(), "supported_isas": list(_EXT.supported_isas()),
            "reason": "", "last_call": dict(_EXT.last_call())}


def set_isa(name: str | None) -> None:
    """Force the kernel's instruction-set variant (for tests and benchmarks); ``None``
    restores the fastest one this CPU supports.

    Raises:
      RuntimeError: the extension is unavailable.
      ValueError: ``name`` is not supported on this CPU.
    """
    _require()
    _EXT.set_isa(name if name is not None else _EXT.supported_isas()[0])


def set_max_threads(n: int) -> None:
    """Cap the kernel's worker threads (``0``: XLA's intra-op pool size)."""
    _require()
    _EXT.set_max_threads(int(n))


def _require() -> None:
    if _EXT is None:
        raise RuntimeError(f"the CPU TW kernel is unavailable: {_REASON}")


def unsupported(x: Any, w: Any) -> str | None:
    """Why ``x @ w`` cannot run on the kernel, or ``None`` if it can.

    The kernel takes a tile-format weight (:class:`~tvwjax.formats.TileWise`,
    :class:`~tvwjax.formats.BlockSparse`; a :class:`~tvwjax.formats.TileVectorWise` is
    decoded to its compact blocks by XLA first) and float32 / bfloat16 / float16 ``x`` and
    values.
    """
    if _EXT is None:
        return _REASON
    if not isinstance(w, TileFormat):
        return f"not a tile format ({type(w).__name__})"
    for name, dt in (("x", getattr(x, "dtype", None)), ("values", w.values.dtype)):
        if dt is None or jnp.dtype(dt) not in ACCEPTED_DTYPES:
            return f"{name} dtype {dt} (the kernel takes float32, bfloat16, float16)"
    return None


# -- the custom call ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static part of a product: the weight's tables and shape (hashable)."""

    rows: StaticArray
    cols: StaticArray
    counts: StaticArray
    k: int
    n: int


def _ffi(spec: _Spec, x: Array, values: Array) -> Array:
    out = jax.ShapeDtypeStruct((x.shape[0], spec.n), x.dtype)
    return jax.ffi.ffi_call(TARGET, out)(x, values, spec.rows.array, spec.cols.array,
                                         spec.counts.array)


@functools.lru_cache(maxsize=256)
def _batched(spec: _Spec):
    """The custom call with a batching rule: a batch of ``x`` against one weight is one call
    with the batch folded into ``M``; batched weights run one call per batch element."""

    @jax.custom_batching.custom_vmap
    def call(x, values):
        return _ffi(spec, x, values)

    @call.def_vmap
    def _rule(axis_size, in_batched, x, values):
        xb, vb = in_batched
        if not vb:
            if not xb:
                return call(x, values), False
            b, m, k = x.shape
            return call(x.reshape(b * m, k), values).reshape(b, m, spec.n), True
        if not xb:
            x = jnp.broadcast_to(x, (axis_size, *x.shape))
        return lax.map(lambda a: call(*a), (x, values)), True

    return call


def _backward(spec: _Spec, x: Array, values: Array, dy: Array) -> tuple[Array, Array]:
    """``dx = dy @ W^T`` and ``dvalues`` on the compact layout: the kernels' shared plain-jnp
    tile VJP (padding rows get zero gradient)."""
    return tile_matmul_vjp(x, values, jnp.asarray(spec.rows.array),
                           jnp.asarray(spec.cols.array), jnp.asarray(spec.counts.array), dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tw(spec: _Spec, x: Array, values: Array) -> Array:
    return _batched(spec)(x, values)


def _tw_fwd(spec, x, values):
    return _batched(spec)(x, values), (x, values)


def _tw_bwd(spec, res, dy):
    x, values = res
    return _backward(spec, x, values, dy)


_tw.defvjp(_tw_fwd, _tw_bwd)


def tw_matmul_cpu(x2d: Array, w: TileFormat) -> Array:
    """``x2d @ W`` for a tile-format ``W`` on the compiled CPU kernel.

    Args:
      x2d: ``(M, K)`` activations, float32, bfloat16 or float16.
      w: a :class:`~tvwjax.formats.TileWise` (or :class:`~tvwjax.formats.BlockSparse`,
        or :class:`~tvwjax.formats.TileVectorWise`, decoded to its compact blocks by XLA)
        of shape ``(K, N)``; its tables were checked by :mod:`tvwjax.formats`.

    Returns:
      ``(M, N)`` in the promoted dtype of ``x2d`` and ``w.values``, accumulated in float32
      (float16: computed in float32, rounded once). Differentiable (reverse mode) with
      respect to ``x2d`` and ``w.values``; padding rows of a tile get zero gradient.

    Raises:
      RuntimeError: the extension is unavailable (see :func:`reason`).
      ConfigError: ``w`` is not a tile format.
      DTypeError: a dtype other than float32, bfloat16 or float16.
      ShapeError: ``x2d`` not 2-D or ``x2d.shape[1] != K``.
    """
    _require()
    if not isinstance(w, TileFormat):
        raise ConfigError(f"w: expected a tile-format compressed weight (TileWise, "
                          f"BlockSparse, TileVectorWise), got {type(w).__name__}")
    x2d = jnp.asarray(x2d)
    why = unsupported(x2d, w)
    if why is not None:
        raise DTypeError(f"tw_matmul_cpu: {why}")
    k, n = (int(s) for s in w.shape)
    if x2d.ndim != 2 or x2d.shape[1] != k:
        raise ShapeError(f"x2d: expected (M, K={k}) for w of shape {(k, n)}, got "
                         f"{tuple(x2d.shape)}")
    out_dtype = jnp.result_type(x2d.dtype, w.values.dtype)
    cdt = jnp.dtype(jnp.bfloat16) if out_dtype == jnp.bfloat16 else jnp.dtype(jnp.float32)
    m = x2d.shape[0]
    if m == 0 or w.num_tiles == 0:
        return jnp.zeros((m, n), out_dtype)
    spec = _Spec(w.static_table("rows"), w.static_table("cols"), w.static_table("counts"), k, n)
    values = w.compact_values()
    y = _tw(spec, x2d.astype(cdt), values.astype(cdt))
    return y.astype(out_dtype)


__all__ = ["available", "isa", "reason", "report", "set_isa", "set_max_threads",
           "tw_matmul_cpu", "unsupported"]
