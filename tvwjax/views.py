"""GEMM views of a Flax model's kernels, read off the modules that use them.

A pattern is defined on the ``(K, N)`` GEMM a kernel takes part in: contracted axes
flattened into ``K``, output axes into ``N``. The leaf shape alone cannot always tell which
axes are contracted: an attention query kernel is ``(in, heads, head_dim)`` (``K = in``)
while the output projection is ``(heads, head_dim, out)`` (``K = heads * head_dim``).
:func:`gemm_views` asks the modules: it returns ``{kernel_path: n_in}`` (the number of
leading contracted axes) for every kernel whose module it knows, ready for the ``views=``
argument of :func:`tvwjax.masks`, :func:`tvwjax.selection`, :func:`tvwjax.prune`,
:func:`tvwjax.check_tree` and :func:`tvwjax.nn.compress_params`.

==============================================  ============================================
module                                          ``n_in``
==============================================  ============================================
Linen ``Dense``, NNX ``Linear``                 1
Linen ``DenseGeneral`` (``axis``), NNX          the number of contracted input axes (query /
``LinearGeneral`` (``in_features``)             key / value: 1; attention output: 2)
``Conv``, ``ConvTranspose`` (Linen and NNX)     ``ndim - 1``: ``(kh*kw*Cin, Cout)`` (im2col)
``Einsum`` (Linen and NNX)                      the kernel's leading contracted letters
==============================================  ============================================

Kernels of other modules (or with batch axes) are left out; :func:`tvwjax.masks` then uses
its shape rule (2-D and 4-D kernels) and skips the rest, which :func:`tvwjax.selection`
reports.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from tvwjax.errors import ConfigError


def _einsum_n_in(spec: str, ndim: int) -> int | None:
    """Leading contracted axes of the kernel (second operand) of an einsum, or None."""
    spec = spec.replace("...", "").replace(" ", "")
    if "->" not in spec or spec.count(",") != 1:
        return None
    inputs, out = spec.split("->")
    x_spec, k_spec = inputs.split(",")
    if len(k_spec) != ndim:
        return None
    contracted = [c for c in k_spec if c in x_spec and c not in out]
    n_in = len(contracted)
    batch = [c for c in k_spec if c in x_spec and c in out]
    if batch or not 1 <= n_in < ndim or set(k_spec[:n_in]) != set(contracted):
        return None
    return n_in


def _linen_n_in(mod: nn.Module, ndim: int) -> int | None:
    if isinstance(mod, nn.Dense) and ndim == 2:
        return 1
    if isinstance(mod, nn.DenseGeneral):
        if getattr(mod, "batch_dims", ()):
            return None
        axis = mod.axis if isinstance(mod.axis, tuple | list) else (mod.axis,)
        return len(axis) if 1 <= len(axis) < ndim else None
    if isinstance(mod, nn.Conv | nn.ConvTranspose):
        return ndim - 1
    if isinstance(mod, nn.Einsum):
        return _einsum_n_in(mod.einsum_str, ndim)
    return None


def _nnx_n_in(mod: Any, ndim: int) -> int | None:
    from flax import nnx

    if isinstance(mod, nnx.Linear) and ndim == 2:
        return 1
    if isinstance(mod, nnx.LinearGeneral):
        if getattr(mod, "batch_axis", None):
            return None
        in_f = mod.in_features if isinstance(mod.in_features, tuple | list) \
            else (mod.in_features,)
        return len(in_f) if 1 <= len(in_f) < ndim else None
    if isinstance(mod, nnx.Conv | nnx.ConvTranspose):
        return ndim - 1
    if isinstance(mod, nnx.Einsum):
        return _einsum_n_in(mod.einsum_str, ndim)
    return None


def gemm_views(model: Any, *args: Any, method: Any = None, rngs: Any = None,
               **kwargs: Any) -> dict[str, int]:
    """``{kernel_path: n_in}`` for the kernels of a Linen or NNX model (see the module doc).

    Args:
      model: an unbound Linen module (then ``args``/``kwargs`` are example inputs for its
        ``init``; only shapes matter, nothing is computed) or an NNX module (no inputs
        needed: its submodules are inspected).
      method: the Linen method ``init`` runs (default ``__call__``).
      rngs: Linen ``init`` rngs (default: one key for ``params`` and ``dropout``).

    Returns:
      A dict keyed like the paths of :func:`tvwjax.masks` on the model's ``params``
      (Linen: ``"attn/query/kernel"``; a leading ``params/`` also matches) or on
      ``nnx.state(model)`` (NNX).

    >>> import jax.numpy as jnp, flax.linen as nn, tvwjax
    >>> attn = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)
    >>> tvwjax.gemm_views(attn, jnp.ones((1, 5, 32)))
    {'query/kernel': 1, 'key/kernel': 1, 'value/kernel': 1, 'out/kernel': 2}
    """
    if isinstance(model, nn.Module):
        views: dict[str, int] = {}

        def interceptor(next_fun, a, kw, context):
            mod = context.module
            out = next_fun(*a, **kw)
            if context.method_name == "__call__" and mod.has_variable("params", "kernel"):
                kernel = mod.get_variable("params", "kernel")
                ndim = len(getattr(kernel, "value", kernel).shape)
                n_in = _linen_n_in(mod, ndim)
                if n_in is not None:
                    views["/".join((*mod.path, "kernel"))] = n_in
            return out

        key = jax.random.key(0)
        rngs = rngs if rngs is not None else {"params": key, "dropout": key}
        with nn.intercept_methods(interceptor):
            jax.eval_shape(lambda: model.init(rngs, *args, method=method, **kwargs))
        return views
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax ships nnx
        nnx = None
    if nnx is not None and isinstance(model, nnx.Module):
        if args or kwargs:
            raise ConfigError("gemm_views: an NNX model needs no example inputs")
        views = {}
        for path, node in nnx.iter_graph(model):
            kernel = getattr(node, "kernel", None) if isinstance(node, nnx.Module) else None
            if isinstance(kernel, nnx.Variable):
                n_in = _nnx_n_in(node, len(kernel.shape))
                if n_in is not None:
                    views["/".join((*map(str, path), "kernel"))] = n_in
        return views
    raise ConfigError(f"gemm_views: model must be a flax.linen Module or an nnx.Module, got "
                      f"{type(model).__name__}")


__all__ = ["gemm_views"]
