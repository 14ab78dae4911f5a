"""The one layer of pytree utilities: leaf paths, tree comparisons and the GEMM view.

Leaves are addressed by *path strings*: the pytree keys joined by ``/``
(``"Dense_0/kernel"``, ``"layers/0/linear/kernel"``); the trailing ``value`` of an NNX
variable is dropped, so masks computed on ``nnx.state(model)`` line up with the pure arrays
Optax sees.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import jax
import jax.numpy as jnp

from tvwjax.errors import ConfigError, TreeMismatchError

PyTree = Any
KeyPath = tuple


def is_none(x: Any) -> bool:
    """``is_leaf`` predicate that keeps ``None`` as a leaf (mask trees)."""
    return x is None


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: KeyPath) -> str:
    """Readable ``/``-joined path of a pytree key path (NNX's trailing ``value`` dropped).

    >>> import jax
    >>> [path_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(
    ...     {"dense": {"kernel": 1, "bias": 2}})[0]]
    ['dense/bias', 'dense/kernel']
    """
    names = [_key_name(k) for k in path]
    if len(names) > 1 and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]
    return "/".join(names)


def leaves_with_paths(tree: PyTree, *, none_leaves: bool = False
                      ) -> tuple[list[tuple[str, Any]], Any]:
    """``([(path_str, leaf), ...], treedef)`` of ``tree`` (``None`` kept as leaves on request)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=is_none if none_leaves else None)
    return [(path_str(kp), leaf) for kp, leaf in flat], treedef


def path_difference(want: list[str], got: list[str], limit: int = 5
                    ) -> tuple[list[str], list[str]]:
    """The first ``limit`` paths of ``want`` missing from ``got``, and of ``got`` not in
    ``want`` (for error messages about mismatched pytrees)."""
    w, g = set(want), set(got)
    return [p for p in want if p not in g][:limit], [p for p in got if p not in w][:limit]


def check_same_leaves(tree: PyTree, params: PyTree, what: str, *, none_ok: bool) -> None:
    """Raise :class:`TreeMismatchError` unless ``tree`` has the leaf paths and leaf shapes of
    ``params`` (``None`` leaves allowed where ``none_ok``). Static: costs nothing under jit."""
    t_flat, _ = leaves_with_paths(tree, none_leaves=none_ok)
    p_flat, _ = leaves_with_paths(params)
    if none_ok:  # a None mask may stand where params hold None (a layer without bias)
        have = {p for p, _ in p_flat}
        t_flat = [(p, t) for p, t in t_flat if t is not None or p in have]
    t_paths, p_paths = [p for p, _ in t_flat], [p for p, _ in p_flat]
    if t_paths != p_paths:
        missing, extra = path_difference(p_paths, t_paths)
        raise TreeMismatchError(f"{what} must have the structure of params"
                                f"{' (a mask or None per leaf)' if none_ok else ''}: missing "
                                f"{missing}, unexpected {extra}")
    for (path, t), (_, p) in zip(t_flat, p_flat, strict=True):
        if t is not None and tuple(jnp.shape(t)) != tuple(jnp.shape(p)):
            raise TreeMismatchError(f"{what}: {path}: shape {jnp.shape(t)} differs from the "
                                    f"parameter's {jnp.shape(p)}")


def as_matrix(x: jax.Array, n_in: int | None = None) -> jax.Array:
    """The ``(K, N)`` GEMM view of a kernel whose first ``n_in`` axes are contracted:
    ``(prod(shape[:n_in]), prod(shape[n_in:]))`` (default ``n_in = ndim - 1``).

    >>> import jax.numpy as jnp
    >>> as_matrix(jnp.zeros((3, 3, 8, 16))).shape   # a conv kernel: im2col (kh*kw*Cin, Cout)
    (72, 16)
    >>> as_matrix(jnp.zeros((384, 12, 32)), n_in=1).shape  # attention query (in, heads, dim)
    (384, 384)
    """
    n_in = x.ndim - 1 if n_in is None else n_in
    shape = tuple(x.shape)
    return x.reshape(math.prod(shape[:n_in]), math.prod(shape[n_in:]))


def n_in_for(shape: tuple[int, ...], k: int) -> int | None:
    """The ``n_in`` whose GEMM view of ``shape`` has ``K = k`` rows (``None`` if none):
    e.g. the view that calibration statistics of ``k`` input features fit."""
    for n_in in range(1, len(shape)):
        if math.prod(shape[:n_in]) == k:
            return n_in
    return None


def default_n_in(shape: tuple[int, ...]) -> int | None:
    """Contracted leading axes of a kernel known from its shape alone: 1 for a 2-D
    ``(in, out)`` kernel, 3 for a 4-D ``(kh, kw, Cin, Cout)`` conv kernel; ``None`` where the
    shape cannot tell (a 3-D kernel is ``(in, heads, head_dim)`` for an attention query and
    ``(heads, head_dim, out)`` for its output projection, or a 1-D conv)."""
    return {2: 1, 4: 3}.get(len(shape))


def view_of(path: str, shape: tuple[int, ...], views: Any) -> tuple[int | None, str]:
    """``(n_in, "")`` for the GEMM view of the leaf at ``path``, or ``(None, reason)``.

    ``views`` maps leaf paths or globs (``fnmatch`` on path strings; a key also matches the
    same path under a leading ``params/``) to ``n_in``, the number of leading contracted
    axes (see :func:`tvwjax.gemm_views`). Leaves it does not name use :func:`default_n_in`.
    """
    n_in = None
    if views:
        for key, value in views.items():
            if fnmatch.fnmatchcase(path, key) or fnmatch.fnmatchcase(path, "params/" + key):
                n_in = value
                break
        if n_in is not None and (isinstance(n_in, bool) or not isinstance(n_in, int)
                                 or not 1 <= n_in < len(shape)):
            raise ConfigError(f"views: {path}: n_in must be an integer in [1, {len(shape) - 1}] "
                              f"for a kernel of shape {shape}, got {n_in!r}")
    if n_in is None:
        n_in = default_n_in(shape)
    if n_in is None:
        return None, (f"GEMM layout of a {len(shape)}-D kernel {shape} is unknown from its "
                      "shape ((in, heads, head_dim) or (heads, head_dim, out)?); pass "
                      "views=tvwjax.gemm_views(model, ...) or views={path: n_in}, n_in = "
                      "the number of leading contracted axes")
    return n_in, ""


__all__ = ["as_matrix", "check_same_leaves", "default_n_in", "is_none", "leaves_with_paths",
           "n_in_for", "path_difference", "path_str", "view_of"]
