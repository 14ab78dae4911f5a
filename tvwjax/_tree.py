"""The one layer of pytree utilities: leaf paths, tree comparisons and the GEMM view.

Leaves are addressed by *path strings*: the pytree keys joined by ``/``
(``"Dense_0/kernel"``, ``"layers/0/linear/kernel"``); the trailing ``value`` of an NNX
variable is dropped, so masks computed on ``nnx.state(model)`` line up with the pure arrays
Optax sees.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tvwjax.errors import TreeMismatchError

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


def as_matrix(x: jax.Array) -> jax.Array:
    """The ``(K, N)`` GEMM view of a kernel: ``(prod(shape[:-1]), shape[-1])``.

    >>> import jax.numpy as jnp
    >>> as_matrix(jnp.zeros((3, 3, 8, 16))).shape   # a conv kernel: im2col (kh*kw*Cin, Cout)
    (72, 16)
    """
    return x.reshape(-1, x.shape[-1])


__all__ = ["as_matrix", "check_same_leaves", "is_none", "leaves_with_paths", "path_difference",
           "path_str"]
