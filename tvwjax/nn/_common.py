"""The forward pass the Linen and NNX sparse layers share (dense or compressed kernel)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from tvwjax import _validate as val
from tvwjax.errors import ShapeError
from tvwjax.formats import CompressedWeight
from tvwjax.matmul import BACKENDS, matmul

Array = jax.Array


def check_layer_args(owner: str, sizes: dict[str, Any], use_bias: Any,
                     backend: Any) -> dict[str, int]:
    """Construction-time checks of a layer's sizes, ``use_bias`` and ``backend``.

    Returns the sizes as Python ints; raises :class:`~tvwjax.errors.ConfigError` naming the
    parameter (``"SparseDense: features must be a positive integer, got 0"``).
    """
    out = {k: val.positive_int(v, f"{owner}: {k}") for k, v in sizes.items()}
    val.flag(use_bias, f"{owner}: use_bias")
    val.choice(backend, f"{owner}: backend", BACKENDS)
    return out


def check_inputs(inputs: Any, where: str) -> Array:
    """``inputs`` as a JAX array of shape ``(..., K)`` with ``K >= 1`` (NumPy arrays and
    nested lists are converted), else a :mod:`tvwjax.errors` exception naming ``inputs``."""
    x = val.array(inputs, f"{where}: inputs")
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ShapeError(f"{where}: inputs must have shape (..., K) with K >= 1 features, got "
                         f"shape {tuple(x.shape)}")
    return x


def kernel_shape(kernel: Any) -> tuple[int, int]:
    """``(K, N)`` of a dense or compressed kernel."""
    return tuple(int(s) for s in kernel.shape)  # type: ignore[return-value]


def dense_forward(inputs: Array, kernel: Any, bias: Array | None, *, features: int,
                  dtype: Any, precision: Any, backend: str, where: str) -> Array:
    """``inputs @ kernel + bias`` with ``nn.Dense``'s dtype rules, for either kernel kind.

    A dense kernel takes exactly ``nn.Dense``'s path (``lax.dot_general`` with
    ``precision``); a compressed one goes through :func:`tvwjax.matmul`.
    """
    inputs = check_inputs(inputs, where)
    k, n = kernel_shape(kernel)
    if n != features:
        raise ShapeError(f"{where}: kernel has {n} output features, the layer has "
                         f"features={features}")
    if inputs.shape[-1] != k:
        raise ShapeError(f"{where}: inputs have {inputs.shape[-1]} features, the kernel "
                         f"expects {k}")
    is_compressed = isinstance(kernel, CompressedWeight)
    kdtype = kernel.values.dtype if is_compressed else kernel.dtype
    if dtype is None:
        dtype = jnp.result_type(inputs.dtype, kdtype,
                                *(() if bias is None else (bias.dtype,)))
    inputs = jnp.asarray(inputs, dtype)
    if is_compressed:
        kernel = kernel.replace(values=kernel.values.astype(dtype))
        y = matmul(inputs, kernel, backend=backend)
    else:
        y = lax.dot_general(inputs, jnp.asarray(kernel, dtype),
                            (((inputs.ndim - 1,), (0,)), ((), ())), precision=precision)
    if bias is not None:
        y = y + jnp.reshape(jnp.asarray(bias, dtype), (1,) * (y.ndim - 1) + (-1,))
    return y


__all__ = ["check_inputs", "check_layer_args", "dense_forward", "kernel_shape"]
