"""Checkpoints with orbax-checkpoint: training states and compressed inference params.

Two functions, :func:`save` and :func:`restore`, for any pytree of arrays:

* a **training state**, e.g. ``{"params": params, "opt_state": opt_state, "step": step}``
  where ``opt_state`` is the state of ``optax.chain(inner, tvwjax.prune(...))``: the
  :class:`~tvwjax.transform.PruneState` (masks, schedule step ``count``, effective sparsity)
  is saved like every other part of the optimizer state; a Flax ``TrainState`` and NNX
  state (``nnx.state(model)``, RNG keys included) are saved as they are;
* **compressed params** (``tvwjax.nn.compress_params``), whose
  :class:`~tvwjax.formats.CompressedWeight` leaves keep their index tables as *static*
  pytree aux data, not as leaves.

Layout of a checkpoint directory (one orbax ``CompositeCheckpointHandler`` checkpoint):

``arrays``
  an orbax ``StandardSave`` item: a flat dict of every array, keyed ``l<i>`` for the ``i``-th
  leaf (for a compressed weight ``l<i>.values`` and one ``l<i>.<table>`` per index table;
  for a typed PRNG key array its ``jax.random.key_data``).
``meta``
  an orbax ``JsonSave`` item: per leaf its path string (``tvwjax.path_str``), shape and dtype
  (a typed key array: its key shape, its dtype ``key<...>``, ``key_impl`` (the name
  ``jax.random.wrap_key_data`` takes) and its data's shape and dtype); for a compressed
  weight its class, its static fields (dense ``shape``, ``tile``, ``nm``, ``block``) and its
  tables' shapes and dtypes. Zero-size arrays (orbax cannot store them, e.g. the tables of an
  all-pruned weight) live in the metadata only.

A checkpoint is input like any other. Restoring first checks the stored arrays' shapes and
dtypes against the metadata, then rebuilds each compressed weight through its constructor,
which checks the tables against the format's layout contract
(:class:`~tvwjax.errors.FormatError` naming the leaf, the table and the bad entry), so no
restored table can make a kernel or a gather read outside a buffer. A valid weight comes
back *identical*: same class, equal tables (same pytree aux data, hence the same ``jit``
cache entry) and bit-identical values.

``restore(path, target)`` takes the pytree structure from ``target`` and checks every saved
leaf against it (:class:`~tvwjax.errors.TreeMismatchError` naming the first differing leaf):
its path, shape and dtype; for a compressed weight its class, static fields and values dtype
(its tables come from the checkpoint and may differ from the target's). Targets are what
users build: the state from ``init``; its ``jax.eval_shape`` (``ShapeDtypeStruct``
leaves); ``flax.training.train_state.TrainState.create(...)``; ``nnx.state(model)``,
compressed ``SparseLinear`` kernels included; typed PRNG keys (``jax.random.key``), restored
as typed keys. Dtypes: an integer leaf saved with another width (a Python ``int`` step
against an ``int32`` one, or back) is cast to the target's dtype when every value fits; a
Python scalar (weakly typed) on either side matches any dtype of its kind; any other
difference (float against int, float32 against bfloat16) raises. The result takes the
target's leaf type (a Python scalar for a Python scalar). Arrays are restored with the
shardings of ``target``'s leaves (``jax.Array`` or ``jax.ShapeDtypeStruct`` with
``sharding``), so a sharded state is read straight into its shards on every host. Integer
arrays JAX cannot hold (``int64`` without ``jax_enable_x64``) come back as NumPy arrays
rather than truncated. Without a ``target`` the result is nested dicts keyed by path
(exactly the structure of Linen ``params`` dicts), on the default device.

Not supported: non-array leaves other than Python scalars.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax._tree import path_difference, path_str
from tvwjax.errors import ConfigError, FormatError, TreeMismatchError, TvwError
from tvwjax.formats import CompressedWeight

PyTree = Any
FORMAT_VERSION = 1
_EMPTY = "empty"  # the one array of a checkpoint whose leaves are all zero-size


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


def _is_key(x: Any) -> bool:
    """A typed PRNG key array (or its ``ShapeDtypeStruct``)."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _is_py_scalar(x: Any) -> bool:
    """A Python ``bool`` / ``int`` / ``float`` (weakly typed; NumPy scalars are arrays)."""
    return isinstance(x, bool | int | float) and not isinstance(x, np.generic)


def _put(arrays: dict, key: str, x: Any) -> None:
    """Add array ``x`` under ``key`` (zero-size arrays are kept in the metadata only)."""
    if int(np.prod(np.shape(x))) > 0:
        arrays[key] = x if isinstance(x, jax.Array | np.ndarray) else np.asarray(x)


def save(path: str | os.PathLike, tree: PyTree, *, force: bool = False) -> Path:
    """Save a pytree (training state or compressed params) as an orbax checkpoint.

    Args:
      path: the checkpoint directory (created; its parent must exist).
      tree: any pytree of ``jax.Array`` / numpy arrays / Python scalars / typed PRNG key
        arrays (saved as their key data and impl name), possibly with
        :class:`~tvwjax.formats.CompressedWeight` nodes (their tables are saved too): a
        training state, a Flax ``TrainState``, ``nnx.state(model)``.
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
            _put(arrays, f"{key}.values", leaf.values)
            entry["tables"] = {}
            for name in leaf.table_fields:
                t = leaf.static_table(name).array
                entry["tables"][name] = _array_meta(t)
                _put(arrays, f"{key}.{name}", t)
        elif _is_key(leaf):
            data = jax.random.key_data(leaf)
            entry.update(shape=[int(s) for s in leaf.shape], dtype=str(leaf.dtype),
                         key_impl=str(jax.random.key_impl(leaf)), data=_array_meta(data))
            _put(arrays, key, data)
        else:
            if not hasattr(leaf, "dtype") and not _is_py_scalar(leaf):
                raise ConfigError(f"checkpoint: {entry['path']}: unsupported leaf of type "
                                  f"{type(leaf).__name__}")
            entry.update(_array_meta(leaf))
            entry["python"] = type(leaf).__name__ if _is_py_scalar(leaf) else None
            _put(arrays, key, leaf)
        leaves.append(entry)
    if not arrays:  # orbax refuses an empty item (a tree of scalars-free, zero-size leaves)
        arrays[_EMPTY] = np.zeros((1,), np.uint8)
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


def _key_data_sharding(t: Any) -> jax.sharding.Sharding:
    """The sharding of a key array's data: a named or single-device sharding carries over
    (the data only adds trailing axes); anything else places it on the default device."""
    s = getattr(t, "sharding", None)
    if isinstance(s, jax.sharding.NamedSharding | jax.sharding.SingleDeviceSharding):
        return s
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _abstract(m: dict, sharding: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(m["shape"]), np.dtype(m["dtype"]), sharding=sharding)


def _host(m: dict) -> np.ndarray:
    """A placeholder that makes orbax read the array into host NumPy, in its stored dtype."""
    return np.empty(tuple(m["shape"]), np.dtype(m["dtype"]))


def _jax_can_hold(dtype: np.dtype) -> bool:
    """Whether a ``jax.Array`` can have ``dtype`` (``int64`` needs ``jax_enable_x64``)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype)) == np.dtype(dtype)


def _kind(dtype: Any) -> str:
    """``b`` bool, ``i`` any integer, ``f`` floating (bfloat16 too), ``c`` complex."""
    if np.dtype(dtype) == np.bool_:
        return "b"
    for kind, parent in (("i", jnp.integer), ("f", jnp.floating), ("c", jnp.complexfloating)):
        if jnp.issubdtype(dtype, parent):
            return kind
    return "o"


def _describe(t: Any) -> str:
    if _is_compressed(t):
        return f"a {type(t).__name__}"
    if _is_key(t):
        return f"a typed PRNG key array of shape {tuple(t.shape)} and dtype {t.dtype}"
    if _is_py_scalar(t):
        return f"a Python {type(t).__name__}"
    if hasattr(t, "shape") and hasattr(t, "dtype"):
        return f"an array of shape {tuple(t.shape)} and dtype {np.dtype(t.dtype).name}"
    return f"a {type(t).__name__}"


class _Arrays:
    """The ``arrays`` item: what each leaf will read, checked against what is stored."""

    def __init__(self, stored: dict[str, tuple[tuple[int, ...], str]]):
        self.stored = stored
        self.abstract: dict[str, Any] = {}
        self.read: dict[str, Any] = {}

    def want(self, key: str, m: dict, where: str, placeholder: Any) -> None:
        shape, dtype = tuple(int(s) for s in m["shape"]), np.dtype(m["dtype"]).name
        if int(np.prod(shape)) == 0:
            return
        got = self.stored.get(key)
        if got is None:
            raise ConfigError(f"{where}: the checkpoint stores no array {key!r}, its metadata "
                              f"lists one of shape {shape}")
        if got != (shape, dtype):
            raise ConfigError(f"{where}: the stored array {key!r} has shape {got[0]} and dtype "
                              f"{got[1]}, the checkpoint's metadata says {shape} and {dtype}")
        self.abstract[key] = placeholder

    def get(self, key: str, m: dict, *, host: bool) -> Any:
        if key in self.read:
            return self.read[key]
        zeros = np.zeros if host else jnp.zeros      # zero-size: only in the metadata
        return zeros(tuple(m["shape"]), np.dtype(m["dtype"]))


def _stored_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every array the checkpoint's ``arrays`` item really stores."""
    from etils import epath  # an orbax dependency

    tree = _ocp().StandardCheckpointHandler().metadata(epath.Path(path / "arrays"))
    tree = getattr(tree, "tree", tree) or {}
    return {k: (tuple(int(s) for s in v.shape), np.dtype(v.dtype).name)
            for k, v in tree.items()}


def restore(path: str | os.PathLike, target: PyTree | None = None) -> PyTree:
    """Restore a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint directory.
      target: a pytree with the structure of the saved one: the freshly initialised
        training state, ``jax.eval_shape`` of it, a Flax ``TrainState.create(...)``,
        ``nnx.state(model)``; its leaves' shardings place the restored arrays. ``None``:
        nested dicts keyed by the saved path strings.

    Returns:
      The restored pytree; compressed weights are rebuilt identical to the saved ones, typed
      PRNG keys as typed keys, integer leaves in the target's dtype.

    Raises:
      ConfigError: ``path`` is not a tvwjax checkpoint, or its metadata is malformed or
        does not match the arrays it stores.
      TreeMismatchError: ``target``'s leaf paths, shapes or dtypes (for compressed weights:
        class, static fields, values dtype) differ from the saved ones, naming the first
        differing leaf; an integer value that does not fit the target's integer dtype.
      FormatError: a saved compressed weight's index tables break its format's layout
        contract (an index out of range, a count above the padded size, inconsistent shapes,
        unsorted or repeated indices), naming the leaf and the table.
    """
    ocp = _ocp()
    path = Path(path).absolute()
    if not (path / "meta").is_dir() or not (path / "arrays").is_dir():
        raise ConfigError(f"path: {path} is not a tvwjax checkpoint (no 'arrays' and 'meta' "
                          "items)")
    ck = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    meta = ck.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise ConfigError(f"path: unsupported checkpoint version {version!r}")
    entries = meta.get("leaves")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"path: {path} has malformed metadata (no list of leaves)")

    if target is not None:
        t_flat, treedef = jax.tree_util.tree_flatten_with_path(target, is_leaf=_is_compressed)
        t_paths = [path_str(kp) for kp, _ in t_flat]
        s_paths = [e.get("path") for e in entries]
        if t_paths != s_paths:
            missing, extra = path_difference(s_paths, t_paths)
            raise TreeMismatchError(f"target must have the structure of the saved tree: "
                                    f"saved leaves missing from target {missing}, target "
                                    f"leaves not saved {extra}")
        t_leaves = [leaf for _, leaf in t_flat]
    else:
        treedef, t_leaves = None, [None] * len(entries)

    arrays = _Arrays(_stored_arrays(path))
    try:
        plans = []
        for i, (e, t) in enumerate(zip(entries, t_leaves, strict=True)):
            plan = _plan_compressed if "format" in e else _plan_key if "key_impl" in e \
                else _plan_dense
            plans.append(plan(f"l{i}", e, t, arrays))
    except TvwError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"path: {path} has malformed metadata ({type(err).__name__}: "
                          f"{err})") from err
    extra = sorted(set(arrays.stored) - set(arrays.abstract) - {_EMPTY})
    if extra:
        raise ConfigError(f"path: {path} stores arrays its metadata does not list: {extra[:5]}")

    if arrays.abstract:
        arrays.read = ck.restore(path, ocp.args.Composite(
            arrays=ocp.args.StandardRestore(arrays.abstract)))["arrays"]
    out = [finish() for finish in plans]
    if treedef is None:
        return _nested([e["path"] for e in entries], out)
    return jax.tree_util.tree_unflatten(treedef, out)


def _plan_compressed(key: str, e: dict, t: Any, arrays: _Arrays) -> Callable[[], Any]:
    """Check a saved compressed weight against target leaf ``t``; return its builder."""
    where = e["path"]
    cls = _format_classes().get(e["format"])
    if cls is None:
        raise ConfigError(f"{where}: unknown compressed format {e['format']!r}")
    if set(e["tables"]) != set(cls.table_fields) or set(e["static"]) != set(cls.static_fields):
        raise FormatError(f"{where}: the checkpoint's {cls.__name__} lists tables "
                          f"{sorted(e['tables'])} and static fields {sorted(e['static'])}, "
                          f"expected {sorted(cls.table_fields)} and {sorted(cls.static_fields)}")
    statics = {n: _from_json(v) for n, v in e["static"].items()}
    vm = e["values"]
    saved = np.dtype(vm["dtype"])
    if _is_compressed(t):
        if type(t) is not cls:
            raise TreeMismatchError(f"{where}: target is a {type(t).__name__}, the "
                                    f"checkpoint holds a {cls.__name__}")
        for n in cls.static_fields:
            if getattr(t, n) != statics[n]:
                raise TreeMismatchError(f"{where}: target {cls.__name__} has {n}="
                                        f"{getattr(t, n)!r}, the checkpoint holds {n}="
                                        f"{statics[n]!r}")
        t_dtype = getattr(t.values, "dtype", None)
        if t_dtype is not None and np.dtype(t_dtype) != saved:
            raise TreeMismatchError(f"{where}: target {cls.__name__} has values of dtype "
                                    f"{np.dtype(t_dtype).name}, the checkpoint holds dtype "
                                    f"{saved.name}")
    elif t is not None:
        shape = tuple(int(s) for s in statics["shape"])
        if _is_key(t) or _is_py_scalar(t) or not hasattr(t, "shape") \
                or not hasattr(t, "dtype"):
            raise TreeMismatchError(f"{where}: target is {_describe(t)}, the checkpoint "
                                    f"holds a {cls.__name__} of shape {shape}")
        # A dense target where a compressed weight was saved: compare the (K, N) view.
        t_shape = tuple(int(s) for s in t.shape)
        if int(np.prod(t_shape)) != int(np.prod(shape)) or t_shape[-1:] != shape[-1:]:
            raise TreeMismatchError(f"{where}: target shape {t_shape} does not match the "
                                    f"saved compressed weight of shape {shape}")
        if np.dtype(t.dtype) != saved:
            raise TreeMismatchError(f"{where}: target has dtype {np.dtype(t.dtype).name}, the "
                                    f"saved compressed weight holds dtype {saved.name}")
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    vs = _sharding_of(t.values) if _is_compressed(t) else default
    arrays.want(f"{key}.values", vm, where, _abstract(vm, vs))
    for name, tm in e["tables"].items():
        arrays.want(f"{key}.{name}", tm, where, _host(tm))

    def build() -> CompressedWeight:
        fields: dict[str, Any] = dict(statics)
        fields["values"] = arrays.get(f"{key}.values", vm, host=False)
        for name, tm in e["tables"].items():
            fields[name] = np.asarray(arrays.get(f"{key}.{name}", tm, host=True))
        try:
            return cls(**fields)
        except FormatError as err:
            raise FormatError(f"{where}: {err}") from None

    return build


def _plan_key(key: str, e: dict, t: Any, arrays: _Arrays) -> Callable[[], Any]:
    """Check a saved typed PRNG key array against target leaf ``t``; return its builder."""
    where, impl, dtype = e["path"], e["key_impl"], e["dtype"]
    shape = tuple(int(s) for s in e["shape"])
    if t is not None and not _is_key(t):
        raise TreeMismatchError(f"{where}: target is {_describe(t)}, the checkpoint holds a "
                                f"typed PRNG key array of shape {shape} and dtype {dtype}")
    if t is not None and (tuple(t.shape) != shape or str(t.dtype) != dtype):
        raise TreeMismatchError(f"{where}: target is {_describe(t)}, the checkpoint holds "
                                f"shape {shape} and dtype {dtype}")
    dm = e["data"]
    arrays.want(key, dm, where, _abstract(dm, _key_data_sharding(t)))

    def build() -> jax.Array:
        data = arrays.get(key, dm, host=False)
        try:
            k = jax.random.wrap_key_data(data, impl=impl)
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"{where}: cannot rebuild the PRNG keys of impl {impl!r} from "
                              f"data of shape {tuple(data.shape)} ({err})") from None
        if tuple(k.shape) != shape or str(k.dtype) != dtype:
            raise ConfigError(f"{where}: the stored key data make keys of shape "
                              f"{tuple(k.shape)} and dtype {k.dtype}, the checkpoint's "
                              f"metadata says {shape} and {dtype}")
        return k

    return build


_PYTHON = {"bool": bool, "int": int, "float": float}


def _plan_dense(key: str, e: dict, t: Any, arrays: _Arrays) -> Callable[[], Any]:
    """Check a saved dense leaf against target leaf ``t``; return its builder.

    The result takes the target's type: a Python scalar for a Python scalar, an array of
    the target's dtype (cast from another integer width when every value fits) otherwise.
    """
    where, py = e["path"], e.get("python")
    shape, saved = tuple(int(s) for s in e["shape"]), np.dtype(e["dtype"])
    if py is not None and py not in _PYTHON:
        raise ConfigError(f"{where}: unknown Python scalar type {py!r} in the metadata")
    held = f"shape {shape} and dtype {saved.name}"
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if t is None:
        host = py is not None or not _jax_can_hold(saved)
        arrays.want(key, e, where, _host(e) if host else _abstract(e, default))
        if py is not None:
            return lambda: _PYTHON[py](np.asarray(arrays.get(key, e, host=True)))
        return lambda: arrays.get(key, e, host=host)
    if _is_compressed(t) or _is_key(t):
        raise TreeMismatchError(f"{where}: target is {_describe(t)}, the checkpoint holds a "
                                f"dense array of {held}")
    if _is_py_scalar(t):
        if shape != () or _kind(np.asarray(t).dtype) != _kind(saved):
            raise TreeMismatchError(f"{where}: target is {_describe(t)}, the checkpoint "
                                    f"holds {held}")
        arrays.want(key, e, where, _host(e))
        return lambda: type(t)(np.asarray(arrays.get(key, e, host=True)))
    if not (hasattr(t, "shape") and hasattr(t, "dtype")):
        raise ConfigError(f"{where}: unsupported target leaf of type {type(t).__name__}")
    t_shape, t_dtype = tuple(int(s) for s in t.shape), np.dtype(t.dtype)
    mismatch = TreeMismatchError(f"{where}: target has shape {t_shape} and dtype "
                                 f"{t_dtype.name}, the checkpoint holds {held}")
    if t_shape != shape:
        raise mismatch
    weak = py is not None or bool(getattr(t, "weak_type", False))
    if t_dtype == saved:
        cast = False
    elif _kind(saved) == _kind(t_dtype) and (_kind(saved) == "i" or weak):
        cast = True
    else:
        raise mismatch
    sharding = _sharding_of(t)
    if not cast and py is None and _jax_can_hold(saved):
        arrays.want(key, e, where, _abstract(e, sharding))
        return lambda: arrays.get(key, e, host=False)
    arrays.want(key, e, where, _host(e))

    def build() -> Any:
        x = np.asarray(arrays.get(key, e, host=True))
        y = _cast(where, x, t_dtype) if cast else x
        return jax.device_put(y, sharding) if _jax_can_hold(t_dtype) else y

    return build


def _cast(where: str, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``x`` in ``dtype`` (same kind), or TreeMismatchError if a value does not fit."""
    if _kind(dtype) == "i" and x.size:
        info = np.iinfo(dtype)
        lo, hi = int(x.min()), int(x.max())
        if lo < info.min or hi > info.max:
            raise TreeMismatchError(f"{where}: the saved {x.dtype.name} value "
                                    f"{lo if lo < info.min else hi} does not fit the "
                                    f"target's dtype {dtype.name}")
    y = x.astype(dtype)
    if _kind(dtype) in "fc" and (np.isfinite(x) & ~np.isfinite(y)).any():
        raise TreeMismatchError(f"{where}: a saved {x.dtype.name} value overflows the "
                                f"target's dtype {dtype.name}")
    return y


def _nested(paths: list[str], leaves: list[Any]) -> dict:
    out: dict = {}
    for p, leaf in zip(paths, leaves, strict=True):
        node = out
        *parents, last = p.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = leaf
    return out


__all__ = ["FORMAT_VERSION", "restore", "save"]
