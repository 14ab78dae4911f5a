"""Compressed kernels inside the user's own Flax layers (no model rewrite).

Stock ``Dense`` / ``DenseGeneral`` (so ``MultiHeadDotProductAttention``) / ``Conv`` layers,
Linen and NNX, run a compressed kernel (:func:`tvwjax.nn.compress_params`, in the kernel's
GEMM view from :func:`tvwjax.gemm_views`) through :func:`tvwjax.matmul`, and so through the
Pallas kernels on a GPU:

* a dense-general layer moves its contracted axes last, flattens them into ``K`` and
  multiplies: ``y = x2d @ W`` reshaped to the layer's output features, plus its bias;
* a convolution runs as its im2col GEMM: ``jax.lax.conv_general_dilated_patches`` (patch
  features reordered to the kernel's ``(kh, kw, Cin)`` order) times the compressed
  ``(kh*kw*Cin, Cout)`` matrix.

Linen: apply the unchanged model inside :func:`compressed_kernels` (a
``flax.linen.intercept_methods`` context). NNX: :func:`tvwjax.nn.compress_model` swaps the
affected layers to a subclass that does the same. Layers whose kernel stays dense are not
touched.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from tvwjax import _validate as val
from tvwjax.errors import ConfigError, ShapeError
from tvwjax.formats import CompressedWeight
from tvwjax.matmul import BACKENDS, matmul

Array = jax.Array


def _axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    axis = tuple(axis) if isinstance(axis, Sequence) else (axis,)
    return tuple(a % ndim for a in axis)


def _out_dtype(dtype: Any, x: Array, cw: CompressedWeight, bias: Any) -> Any:
    if dtype is not None:
        return dtype
    return jnp.result_type(x.dtype, cw.values.dtype, *(() if bias is None else (bias.dtype,)))


def dense_general(x: Array, cw: CompressedWeight, bias: Array | None, *,
                  axis: int | Sequence[int], features: Sequence[int], dtype: Any,
                  backend: str, name: str) -> Array:
    """``DenseGeneral`` with a compressed ``(prod(in), prod(features))`` kernel."""
    x = val.array(x, f"{name}: inputs")
    if x.ndim == 0:
        raise ShapeError(f"{name}: inputs must have the contracted axes {axis}, got a scalar")
    axes = _axes(axis, x.ndim)
    k = math.prod(x.shape[a] for a in axes)
    n = math.prod(features)
    if tuple(cw.shape) != (k, n):
        raise ConfigError(f"{name}: compressed kernel is {tuple(cw.shape)}, the layer needs "
                          f"({k}, {n}) (contracted axes {axes} of inputs {x.shape}); "
                          "compress it in its GEMM view (views=tvwjax.gemm_views(...))")
    dtype = _out_dtype(dtype, x, cw, bias)
    batch = [a for a in range(x.ndim) if a not in axes]
    x2 = jnp.transpose(x, (*batch, *axes)).reshape(-1, k).astype(dtype)
    y = matmul(x2, cw.replace(values=cw.values.astype(dtype)), backend=backend)
    y = y.reshape(*(x.shape[a] for a in batch), *features)
    if bias is not None:
        y = y + jnp.asarray(bias, dtype).reshape(tuple(features))
    return y


def conv(x: Array, cw: CompressedWeight, bias: Array | None, *,
         kernel_size: Sequence[int], strides: Any, padding: Any, input_dilation: Any,
         kernel_dilation: Any, feature_group_count: int, features: int, dtype: Any,
         backend: str, name: str) -> Array:
    """``Conv`` (NHWC, HWIO) with a compressed ``(prod(window) * Cin, Cout)`` kernel: the
    im2col GEMM."""
    x = val.array(x, f"{name}: inputs")
    rank = len(kernel_size)
    if feature_group_count != 1:
        raise ConfigError(f"{name}: compressed grouped convolutions are not supported "
                          f"(feature_group_count={feature_group_count})")
    unbatched = x.ndim == rank + 1
    if unbatched:
        x = x[None]
    if x.ndim != rank + 2:
        raise ConfigError(f"{name}: compressed conv needs (batch, *spatial, C) inputs, got "
                          f"shape {x.shape}")

    def tup(v, default=1):
        if v is None:
            return (default,) * rank
        return tuple(v) if isinstance(v, Sequence) else (v,) * rank

    pad = canonicalize_padding(padding, rank)
    if isinstance(pad, str) and pad not in ("SAME", "VALID"):
        raise ConfigError(f"{name}: padding {pad!r} is not supported with a compressed kernel "
                          "(use 'SAME', 'VALID' or explicit pads)")
    cin = x.shape[-1]
    k = math.prod(kernel_size) * cin
    if tuple(cw.shape) != (k, features):
        raise ConfigError(f"{name}: compressed kernel is {tuple(cw.shape)}, the layer needs "
                          f"({k}, {features}) (im2col of a {tuple(kernel_size)} window over "
                          f"{cin} channels)")
    dtype = _out_dtype(dtype, x, cw, bias)
    spatial = "HWD"[:rank] if rank <= 3 else None
    if spatial is None:
        raise ConfigError(f"{name}: compressed conv supports 1 to 3 spatial dims")
    dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    patches = jax.lax.conv_general_dilated_patches(
        x.astype(dtype), tuple(kernel_size), tup(strides), pad, lhs_dilation=tup(input_dilation),
        rhs_dilation=tup(kernel_dilation), dimension_numbers=dn)
    # patch features come as (Cin, *window); the kernel's rows are (*window, Cin)
    lead = patches.shape[:-1]
    patches = patches.reshape(*lead, cin, math.prod(kernel_size))
    patches = jnp.swapaxes(patches, -1, -2).reshape(*lead, k)
    y = matmul(patches, cw.replace(values=cw.values.astype(dtype)), backend=backend)
    if bias is not None:
        y = y + jnp.asarray(bias, dtype)
    return y[0] if unbatched else y


def run_layer(mod: Any, x: Array, cw: CompressedWeight, bias: Array | None, backend: str,
              name: str) -> Array | None:
    """The output of a stock Linen or NNX layer with a compressed kernel, or ``None`` if the
    layer kind is not one this module runs."""
    from flax import nnx

    if isinstance(mod, nn.Dense | nnx.Linear):
        feats = (mod.features,) if isinstance(mod, nn.Dense) else (mod.out_features,)
        return dense_general(x, cw, bias, axis=-1, features=feats, dtype=mod.dtype,
                             backend=backend, name=name)
    if isinstance(mod, nn.DenseGeneral | nnx.LinearGeneral):
        if isinstance(mod, nn.DenseGeneral):
            if mod.batch_dims:
                return None
            feats = mod.features if isinstance(mod.features, Sequence) else (mod.features,)
        else:
            if mod.batch_axis:
                return None
            feats = mod.out_features
        return dense_general(x, cw, bias, axis=mod.axis, features=tuple(feats),
                             dtype=mod.dtype, backend=backend, name=name)
    if isinstance(mod, nn.Conv | nnx.Conv) and not isinstance(mod, nn.ConvTranspose):
        feats = mod.features if isinstance(mod, nn.Conv) else mod.out_features
        ks = mod.kernel_size if isinstance(mod.kernel_size, Sequence) else (mod.kernel_size,)
        return conv(x, cw, bias, kernel_size=tuple(ks), strides=mod.strides,
                    padding=mod.padding, input_dilation=mod.input_dilation,
                    kernel_dilation=mod.kernel_dilation,
                    feature_group_count=mod.feature_group_count, features=feats,
                    dtype=mod.dtype, backend=backend, name=name)
    return None


@contextlib.contextmanager
def compressed_kernels(backend: str = "auto") -> Iterator[None]:
    """Run the user's own Linen model with compressed kernels: inside this context,
    ``Dense``, ``DenseGeneral`` (attention included) and ``Conv`` layers whose ``kernel``
    param is a compressed weight compute with :func:`tvwjax.matmul`. Works under ``jax.jit``
    (enter the context inside the traced function, or around the first call).

    Args:
      backend: the :func:`tvwjax.matmul` backend.

    Raises:
      ConfigError: an unknown ``backend`` (on entering), or a compressed kernel in a layer
        kind that cannot run it (``Einsum``, ``ConvTranspose``, grouped conv), or in the
        wrong view.

    >>> import jax, jax.numpy as jnp, flax.linen as nn, tvwjax
    >>> model, x = nn.MultiHeadDotProductAttention(num_heads=2), jnp.ones((1, 4, 16))
    >>> params = model.init(jax.random.key(0), x)["params"]
    >>> views, pattern = tvwjax.gemm_views(model, x), tvwjax.TW(tile=8)
    >>> masks = tvwjax.masks(params, pattern, 0.5, views=views)
    >>> small = tvwjax.nn.compress_params(params, masks, pattern, views=views)
    >>> with tvwjax.nn.compressed_kernels():
    ...     y = jax.jit(model.apply)({"params": small}, x)
    >>> ref = model.apply({"params": tvwjax.apply_masks(params, masks)}, x)
    >>> bool(jnp.allclose(y, ref, atol=1e-5))
    True
    """
    val.choice(backend, "compressed_kernels: backend", BACKENDS)

    def param(mod, name):
        value = mod.get_variable("params", name) if mod.has_variable("params", name) else None
        return value.unbox() if isinstance(value, nn.meta.AxisMetadata) else value

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if (context.method_name == "__call__" and args
                and isinstance(param(mod, "kernel"), CompressedWeight)):
            cw, bias = param(mod, "kernel"), param(mod, "bias")
            name = "/".join((*mod.path, "kernel")) or "kernel"
            y = run_layer(mod, args[0], cw, bias, backend, name)
            if y is not None:
                return y
            if isinstance(mod, nn.Einsum | nn.ConvTranspose | nn.DenseGeneral):
                raise ConfigError(f"{name}: a compressed kernel cannot run in "
                                  f"{type(mod).__name__}; keep this layer dense (overrides="
                                  f"{{{name!r}: None}})")
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


@functools.cache
def _compressed_class(cls: type) -> type:
    """A subclass of an NNX layer class whose ``__call__`` runs a compressed kernel."""

    def __call__(self, inputs, *args, **kwargs):  # noqa: N807
        cw = self.kernel.get_value()
        if not isinstance(cw, CompressedWeight):
            return cls.__call__(self, inputs, *args, **kwargs)
        bias = self.bias.get_value() if getattr(self, "bias", None) is not None else None
        y = run_layer(self, inputs, cw, bias, getattr(self, "_tvw_backend", "auto"),
                      type(self).__name__)
        if y is None:
            raise ConfigError(f"a compressed kernel cannot run in {cls.__name__}")
        return y

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "_tvw_compressed_ok": True})


def swap_nnx_layers(model: Any, backend: str = "auto") -> list[str]:
    """Give every stock NNX ``Linear`` / ``LinearGeneral`` / ``Conv`` holding a compressed
    kernel the compressed forward pass (in place); returns their paths.

    Raises:
      ConfigError: a compressed kernel in a layer kind that cannot run it.
    """
    from flax import nnx

    swapped = []
    for path, node in list(nnx.iter_graph(model)):
        kernel = getattr(node, "kernel", None) if isinstance(node, nnx.Module) else None
        if not isinstance(kernel, nnx.Variable) or not isinstance(kernel.get_value(),
                                                                  CompressedWeight):
            continue
        name = "/".join((*map(str, path), "kernel"))
        if hasattr(type(node), "_tvw_compressed_ok"):  # SparseLinear, or swapped before
            continue
        if isinstance(node, nnx.Linear | nnx.LinearGeneral | nnx.Conv) and not isinstance(
                node, nnx.ConvTranspose):
            object.__setattr__(node, "_tvw_backend", backend)
            object.__setattr__(node, "__class__", _compressed_class(type(node)))
            swapped.append(name)
        else:
            raise ConfigError(f"{name}: a compressed kernel cannot run in "
                              f"{type(node).__name__}; keep this layer dense")
    return swapped


__all__ = ["compressed_kernels", "conv", "dense_general", "run_layer", "swap_nnx_layers"]
