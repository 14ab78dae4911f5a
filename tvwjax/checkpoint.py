"""Checkpoints with orbax-checkpoint: training states and compressed inference params.

Two functions, :func:`save` and :func:`restore`, for any pytree of arrays:

* a **training state**, e.g. ``{"params": params, "opt_state": opt_state, "step": step}``
  where ``opt_state`` is the state of ``optax.chain(inner, tvwjax.prune(...))``: the
  :class:`~tvwjax.transform.PruneState` (masks, schedule step ``count``, effective sparsity)
  is saved like every other part of the optimizer state;
* **compressed params** (``tvwjax.nn.compress_params``), whose
  :class:`~tvwjax.formats.CompressedWeight` leaves keep their index tables as *static*
  pytree aux data, not as leaves.

Layout of a checkpoint directory (one orbax ``CompositeCheckpointHandler`` checkpoint):

``arrays``
  an orbax ``StandardSave`` item: a flat dict of every array, keyed ``l<i>`` for the ``i``-th
  leaf (for a compressed weight ``l<i>.values`` and one ``l<i>.<table>`` per index table).
``meta``
  an orbax ``JsonSave`` item: per leaf its path string (``tvwjax.path_str``), shape and dtype;
  for a compressed weight its class, its static fields (dense ``shape``, ``tile``, ``nm``,
  ``block``) and its tables' shapes and dtypes. Zero-size arrays (orbax cannot store them,
  e.g. the tables of an all-pruned weight) live in the metadata only.

Restoring rebuilds each compressed weight through its constructor from the saved values,
tables and static fields, so the result is the *identical* format object: same class, equal
tables (same pytree aux data, hence the same ``jit`` cache entry) and bit-identical values.

``restore(path, target)`` takes the pytree structure from ``target`` (the state as built by
``init``, or its ``jax.eval_shape``) and checks every saved leaf path, shape and dtype
against it (:class:`~tvwjax.errors.TreeMismatchError` on any difference). Arrays are
restored with the shardings of ``target``'s leaves (``jax.Array`` or
``jax.ShapeDtypeStruct`` with ``sharding``), so a sharded state is read straight into its
shards on every host. Without a ``target`` the result is nested dicts keyed by path
(exactly the structure of Linen ``params`` dicts), on the default device.

Not supported: typed PRNG key arrays (save ``jax.random.key_data(key)``), and non-array
leaves other than Python scalars.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax._tree import path_difference, path_str
from tvwjax.errors import ConfigError, TreeMismatchError
from tvwjax.formats import CompressedWeight

PyTree = Any
FORMAT_VERSION = 1


def _ocp():
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # an optional dependency (extra "examples")
        raise ConfigError("tvwjax.checkpoint needs orbax-checkpoint (pip install "
                          "'orbax-checkpoint>=0.11')") from e
    return ocp


def _is_compressed(x: Any) -> bool:
    return isinstance(x, CompressedWeight)


def _format_classes() -> dict[str, type[CompressedWeight]]:
    """Every (transitive) subclass of :class:`CompressedWeight`, by class name."""
    out: dict[str, type[CompressedWeight]] = {}
    todo = list(CompressedWeight.__subclasses__())
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


def _to_json(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_to_json(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise ConfigError(f"checkpoint: cannot store the static field value {v!r} as JSON")


def _from_json(v: Any) -> Any:
    return tuple(_from_json(x) for x in v) if isinstance(v, list) else v


def _array_meta(x: Any) -> dict:
    return {"shape": [int(s) for s in np.shape(x)], "dtype": np.dtype(x.dtype).name
            if hasattr(x, "dtype") else np.asarray(x).dtype.name}


def _put(arrays: dict, key: str, x: Any, entry: dict) -> None:
    """Add array ``x`` under ``key`` (zero-size arrays are kept in the metadata only)."""
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        raise ConfigError(f"checkpoint: {entry['path']}: typed PRNG keys are not supported; "
                          "save jax.random.key_data(key) instead")
    if int(np.prod(np.shape(x))) > 0:
        arrays[key] = x if isinstance(x, jax.Array | np.ndarray) else np.asarray(x)


def save(path: str | os.PathLike, tree: PyTree, *, force: bool = False) -> Path:
    """Save a pytree (training state or compressed params) as an orbax checkpoint.

    Args:
      path: the checkpoint directory (created; its parent must exist).
      tree: any pytree of ``jax.Array`` / numpy arrays / Python scalars, possibly with
        :class:`~tvwjax.formats.CompressedWeight` nodes (their tables are saved too).
      force: overwrite an existing checkpoint at ``path``.

    Returns:
      The absolute checkpoint path.

    Raises:
      ConfigError: ``path`` exists and ``force`` is False, or an unsupported leaf.
    """
    ocp = _ocp()
    path = Path(path).absolute()
    if path.exists() and not force:
        raise ConfigError(f"path: {path} already exists (pass force=True to overwrite)")
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_compressed)
    arrays: dict[str, Any] = {}
    leaves: list[dict] = []
    for i, (kp, leaf) in enumerate(flat):
        key = f"l{i}"
        entry: dict[str, Any] = {"path": path_str(kp)}
        if _is_compressed(leaf):
            entry["format"] = type(leaf).__name__
            entry["static"] = {n: _to_json(getattr(leaf, n)) for n in leaf.static_fields}
            entry["values"] = _array_meta(leaf.values)
            _put(arrays, f"{key}.values", leaf.values, entry)
            entry["tables"] = {}
            for name in leaf.table_fields:
                t = leaf.static_table(name).array
                entry["tables"][name] = _array_meta(t)
                _put(arrays, f"{key}.{name}", t, entry)
        else:
            if not hasattr(leaf, "dtype") and not isinstance(leaf, bool | int | float):
                raise ConfigError(f"checkpoint: {entry['path']}: unsupported leaf of type "
                                  f"{type(leaf).__name__}")
            entry.update(_array_meta(leaf))
            entry["python"] = type(leaf).__name__ if isinstance(leaf, bool | int | float) \
                else None
            _put(arrays, key, leaf, entry)
        leaves.append(entry)
    meta = {"version": FORMAT_VERSION, "leaves": leaves}
    ck = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    ck.save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                     meta=ocp.args.JsonSave(meta)), force=force)
    return path


def _sharding_of(x: Any) -> jax.sharding.Sharding:
    s = getattr(x, "sharding", None)
    if isinstance(s, jax.sharding.Sharding):
        return s
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _abstract(m: dict, sharding: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(m["shape"]), np.dtype(m["dtype"]), sharding=sharding)


def _nested(paths: list[str], leaves: list[Any]) -> dict:
    out: dict = {}
    for p, leaf in zip(paths, leaves, strict=True):
        node = out
        *parents, last = p.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = leaf
    return out


def restore(path: str | os.PathLike, target: PyTree | None = None) -> PyTree:
    """Restore a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint directory.
      target: a pytree with the structure of the saved one (e.g. the freshly initialised
        training state, or ``jax.eval_shape`` of it); its leaves' shardings place the
        restored arrays. ``None``: nested dicts keyed by the saved path strings.

    Returns:
      The restored pytree; compressed weights are rebuilt identical to the saved ones.

    Raises:
      ConfigError: ``path`` is not a tvwjax checkpoint.
      TreeMismatchError: ``target``'s leaf paths, shapes or dtypes differ from the saved ones
        (naming the first differing leaf).
    """
    ocp = _ocp()
    path = Path(path).absolute()
    if not (path / "meta").is_dir() or not (path / "arrays").is_dir():
        raise ConfigError(f"path: {path} is not a tvwjax checkpoint (no 'arrays' and 'meta' "
                          "items)")
    ck = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    meta = ck.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("version") != FORMAT_VERSION:
        raise ConfigError(f"path: unsupported checkpoint version {meta.get('version')!r}")
    entries = meta["leaves"]

    if target is not None:
        t_flat, treedef = jax.tree_util.tree_flatten_with_path(target, is_leaf=_is_compressed)
        t_paths = [path_str(kp) for kp, _ in t_flat]
        s_paths = [e["path"] for e in entries]
        if t_paths != s_paths:
            missing, extra = path_difference(s_paths, t_paths)
            raise TreeMismatchError(f"target must have the structure of the saved tree: "
                                    f"saved leaves missing from target {missing}, target "
                                    f"leaves not saved {extra}")
        t_leaves = [leaf for _, leaf in t_flat]
    else:
        treedef, t_leaves = None, [None] * len(entries)

    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract: dict[str, jax.ShapeDtypeStruct] = {}
    for i, (e, t) in enumerate(zip(entries, t_leaves, strict=True)):
        if "format" in e:
            if t is not None and not _is_compressed(t):
                _check_like(e["path"], e["static"]["shape"], e["values"]["dtype"], t,
                            dense=True)
            elif t is not None and type(t).__name__ != e["format"]:
                raise TreeMismatchError(f"{e['path']}: target is a {type(t).__name__}, the "
                                        f"checkpoint holds a {e['format']}")
            vs = _sharding_of(t.values) if _is_compressed(t) else default
            if np.prod(e["values"]["shape"]) > 0:
                abstract[f"l{i}.values"] = _abstract(e["values"], vs)
            for name, tm in e["tables"].items():
                if np.prod(tm["shape"]) > 0:
                    abstract[f"l{i}.{name}"] = _abstract(tm, default)
        else:
            if t is not None:
                _check_like(e["path"], e["shape"], e["dtype"], t, dense=False)
            if np.prod(e["shape"]) > 0:
                abstract[f"l{i}"] = _abstract(e, _sharding_of(t))

    arrays = ck.restore(path, ocp.args.Composite(
        arrays=ocp.args.StandardRestore(abstract)))["arrays"] if abstract else {}

    def get(key: str, m: dict) -> Any:
        if key in arrays:
            return arrays[key]
        return jnp.zeros(tuple(m["shape"]), np.dtype(m["dtype"]))

    out = []
    for i, e in enumerate(entries):
        if "format" in e:
            cls = _format_classes().get(e["format"])
            if cls is None:
                raise ConfigError(f"{e['path']}: unknown compressed format {e['format']!r}")
            fields: dict[str, Any] = {n: _from_json(v) for n, v in e["static"].items()}
            fields["values"] = get(f"l{i}.values", e["values"])
            for name, tm in e["tables"].items():
                fields[name] = np.asarray(get(f"l{i}.{name}", tm))
            out.append(cls(**fields))
        else:
            x = get(f"l{i}", e)
            py = e.get("python")
            out.append({"bool": bool, "int": int, "float": float}[py](np.asarray(x))
                       if py else x)
    if treedef is None:
        return _nested([e["path"] for e in entries], out)
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_like(path: str, shape, dtype: str, t: Any, *, dense: bool) -> None:
    """Raise :class:`TreeMismatchError` if target leaf ``t`` differs from the saved leaf."""
    t_shape = tuple(int(s) for s in np.shape(t)) if not hasattr(t, "shape") else \
        tuple(int(s) for s in t.shape)
    t_dtype = np.dtype(t.dtype).name if hasattr(t, "dtype") else np.asarray(t).dtype.name
    if dense:  # a dense target where a compressed weight was saved: compare the (K, N) view
        if int(np.prod(t_shape)) != int(np.prod(shape)) or t_shape[-1:] != tuple(shape)[-1:]:
            raise TreeMismatchError(f"{path}: target shape {t_shape} does not match the "
                                    f"saved compressed weight of shape {tuple(shape)}")
        return
    if t_shape != tuple(shape) or t_dtype != dtype:
        raise TreeMismatchError(f"{path}: target has shape {t_shape} and dtype {t_dtype}, the "
                                f"checkpoint holds shape {tuple(shape)} and dtype {dtype}")


__all__ = ["FORMAT_VERSION", "restore", "save"]
