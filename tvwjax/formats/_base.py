"""The shared machinery of every compressed weight format.

A compressed weight is a pytree whose only leaves are its floating-point ``values``: the
index tables (kept rows, kept columns, counts, 2:4 metadata) are *static*: they live in the
pytree's aux data as read-only numpy arrays (:class:`StaticArray`), next to the dense shape.
Consequences, all intended:

* ``jax.grad`` / Optax see only the values, so a compressed model can be fine-tuned with
  its sparsity structure frozen;
* under ``jax.jit`` the tables are compile-time constants, so the CPU path can plan its
  batched GEMMs (bucket tiles by kept-row count) at trace time with no host round trip;
* two weights with different tables are different pytree types for ``jit`` (one trace each,
  like two different shapes).

Tables are exposed as numpy arrays through attribute access (``cw.rows``); pass them to a
kernel with ``jnp.asarray``.

Tables come from outside (a checkpoint, a hand-built weight), and the kernels gather with
them, so they are checked wherever a weight is built from data the library did not check:
the constructor, :meth:`CompressedWeight.replace` and
:func:`tvwjax.checkpoint.restore` run each format's layout contract in NumPy
(:mod:`._tables`) and raise :class:`~tvwjax.errors.FormatError`. The checked aux data
carries its own record (its type), so the unflatten JAX runs on every ``jit`` output and
``tree.map`` is a type test, while aux data from anywhere else is checked there too.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax import _validate as val
from tvwjax.errors import DTypeError, FormatError, ScoreError, ShapeError
from tvwjax.formats import _tables as _tab

Array = jax.Array


class StaticArray:
    """A read-only numpy array that is hashable by content (for pytree aux data)."""

    __slots__ = ("array", "_hash")

    def __init__(self, array: Any):
        a = np.array(array, copy=True)
        a.setflags(write=False)
        self.array = a
        digest = hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()
        self._hash = hash((a.shape, a.dtype.str, digest))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (isinstance(other, StaticArray) and self._hash == other._hash
                and self.array.shape == other.array.shape
                and self.array.dtype == other.array.dtype
                and bool(np.array_equal(self.array, other.array)))

    def __repr__(self) -> str:
        return f"StaticArray(shape={self.array.shape}, dtype={self.array.dtype})"


class _CheckedAux(tuple):
    """Pytree aux data ``(tables, statics)`` that passed the table checks.

    A plain tuple for JAX (it compares and hashes by content, so treedefs are unchanged);
    its type is the record that the checks ran, so :meth:`CompressedWeight._unflatten`,
    which JAX calls on every ``jit`` output and ``tree.map``, trusts it without re-checking.
    Only :meth:`CompressedWeight._check_aux` makes one; any other aux data is checked.
    """

    __slots__ = ()


class CompressedWeight:
    """Base class of the compressed formats (a pytree; see the module docstring).

    Subclasses declare ``leaf_fields`` (differentiable arrays), ``table_fields`` (static
    index tables, stored as :class:`StaticArray` in the dtype ``table_dtypes`` gives) and
    ``static_fields`` (hashable Python values), and implement :meth:`_check_fields`, the
    layout contract of their tables. ``shape`` is always the dense ``(K, N)``.

    The constructor, :meth:`replace` and the pytree unflatten of unchecked aux data validate
    the tables (indices in range, counts within the padded size, shapes consistent, sorted
    and unique where the layout says so) and the values (floating dtype, the shape the
    tables imply), raising :class:`~tvwjax.errors.FormatError`.
    """

    leaf_fields: ClassVar[tuple[str, ...]] = ("values",)
    table_fields: ClassVar[tuple[str, ...]] = ()
    static_fields: ClassVar[tuple[str, ...]] = ("shape",)
    table_dtypes: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls, cls._flatten_with_keys, cls._unflatten, flatten_func=cls._flatten)

    def __init__(self, **fields: Any):
        expected = set(self.leaf_fields) | set(self.table_fields) | set(self.static_fields)
        if set(fields) != expected:
            raise TypeError(f"{type(self).__name__} needs fields {sorted(expected)}, "
                            f"got {sorted(fields)}")
        aux = type(self)._check_aux(tuple(fields[n] for n in self.table_fields),
                                    tuple(fields[n] for n in self.static_fields))
        leaves = {n: fields[n] for n in self.leaf_fields}
        type(self)._check_leaves(aux, leaves)
        self._set(aux, tuple(leaves[n] for n in self.leaf_fields))

    def _set(self, aux: _CheckedAux, children: tuple) -> None:
        tables, statics = aux
        for name, child in zip(self.leaf_fields, children, strict=True):
            object.__setattr__(self, name, child)
        object.__setattr__(self, "_aux_data", aux)
        object.__setattr__(self, "_tables", dict(zip(self.table_fields, tables, strict=True)))
        for name, value in zip(self.static_fields, statics, strict=True):
            object.__setattr__(self, name, value)

    # -- validation ------------------------------------------------------------------------
    @classmethod
    def _check_aux(cls, tables: tuple, statics: tuple) -> _CheckedAux:
        """Check tables and static fields; return them normalised (tables as
        :class:`StaticArray` in their contract dtype, statics as ints / tuples of ints)."""
        where = cls.__name__
        if len(tables) != len(cls.table_fields) or len(statics) != len(cls.static_fields):
            raise FormatError(f"{where}: expected tables {cls.table_fields} and static fields "
                              f"{cls.static_fields}, got {len(tables)} tables and "
                              f"{len(statics)} static fields")
        arrays: dict[str, np.ndarray] = {}
        for name, t in zip(cls.table_fields, tables, strict=True):
            a = _tab.table_array(t.array if isinstance(t, StaticArray) else t, where, name)
            dtype = np.dtype(cls.table_dtypes[name])
            _tab.fits_dtype(a, dtype, where, name)
            arrays[name] = a.astype(dtype, copy=False)
        fixed = cls._check_fields(arrays, dict(zip(cls.static_fields, statics, strict=True)))
        out = []
        for name, t in zip(cls.table_fields, tables, strict=True):
            keep = isinstance(t, StaticArray) and t.array.dtype == arrays[name].dtype
            out.append(t if keep else StaticArray(arrays[name]))
        return _CheckedAux((tuple(out), tuple(fixed[n] for n in cls.static_fields)))

    @classmethod
    def _check_fields(cls, tables: dict[str, np.ndarray], statics: dict[str, Any]
                      ) -> dict[str, Any]:
        """The format's layout contract: raise :class:`FormatError` unless ``tables``
        (concrete, already in their contract dtypes) and ``statics`` are consistent;
        return the statics normalised. Subclasses extend it."""
        return {"shape": _tab.static_pair(statics["shape"], cls.__name__, "shape")}

    @classmethod
    def _leaf_shapes(cls, tables: dict[str, np.ndarray], statics: dict[str, Any]
                     ) -> dict[str, tuple[int, ...]]:
        """The shape of every leaf field that the (checked) tables and statics imply."""
        raise NotImplementedError

    @classmethod
    def _check_leaves(cls, aux: _CheckedAux, leaves: dict[str, Any]) -> None:
        """Raise :class:`FormatError` unless every given leaf is an array (concrete, traced
        or abstract) with a floating dtype and the shape the tables imply."""
        tables, statics = aux
        shapes = cls._leaf_shapes({n: t.array for n, t in zip(cls.table_fields, tables,
                                                               strict=True)},
                                  dict(zip(cls.static_fields, statics, strict=True)))
        where = cls.__name__
        for name, v in leaves.items():
            shape, dtype = getattr(v, "shape", None), getattr(v, "dtype", None)
            if shape is None or dtype is None:
                raise FormatError(f"{where}: {name} must be an array, got "
                                  f"{type(v).__name__}")
            if not jnp.issubdtype(dtype, jnp.floating):
                raise FormatError(f"{where}: {name} must have a floating dtype, got {dtype}")
            if tuple(shape) != shapes[name]:
                raise FormatError(f"{where}: {name} has shape {tuple(shape)}, expected "
                                  f"{shapes[name]} (from the index tables and shape "
                                  f"{statics[0]})")

    # -- pytree protocol -------------------------------------------------------------------
    def _aux(self) -> _CheckedAux:
        return self._aux_data

    def _flatten(self):
        return tuple(getattr(self, n) for n in self.leaf_fields), self._aux_data

    def _flatten_with_keys(self):
        children = tuple((jax.tree_util.GetAttrKey(n), getattr(self, n))
                         for n in self.leaf_fields)
        return children, self._aux_data

    @classmethod
    def _unflatten(cls, aux, children):
        # JAX passes back the aux data a flatten returned: already checked, so this stays a
        # type test. Aux data from anywhere else (a hand-built treedef) is checked here. The
        # children are not: JAX unflattens with placeholders (None, ShapeDtypeStruct,
        # shardings, stacked arrays); the public constructor and replace check values.
        if type(aux) is not _CheckedAux:
            try:
                tables, statics = aux
            except (TypeError, ValueError):
                raise FormatError(f"{cls.__name__}: aux data must be (tables, statics), got "
                                  f"{type(aux).__name__}") from None
            aux = cls._check_aux(tuple(tables), tuple(statics))
        obj = object.__new__(cls)
        obj._set(aux, tuple(children))
        return obj

    def __getattr__(self, name: str) -> np.ndarray:
        tables = self.__dict__.get("_tables", {})
        if name in tables:
            return tables[name].array
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; use .replace({name}=...)")

    def static_table(self, name: str) -> StaticArray:
        """The hashable wrapper of table ``name`` (a cache key for trace-time plans)."""
        return self._tables[name]

    def replace(self, **fields: Any) -> CompressedWeight:
        """A copy with some fields replaced: leaf arrays (e.g. fine-tuned ``values``), or
        index tables and static fields (checked again, as by the constructor).

        Replacing only leaves keeps the (already checked) tables and costs a shape and dtype
        test, so it is cheap inside ``jit``; the new leaves may be traced.

        Raises:
          TypeError: a name that is not a field of the format.
          FormatError: a new leaf is not a floating array of the shape the tables imply, or
            new tables / static fields break the layout contract (checked here, so a wrong
            array fails now rather than deep inside XLA or a kernel).
        """
        cls = type(self)
        names = set(cls.leaf_fields) | set(cls.table_fields) | set(cls.static_fields)
        bad = set(fields) - names
        if bad:
            raise TypeError(f"{cls.__name__}.replace: fields are {sorted(names)}, got "
                            f"{sorted(bad)}")
        aux = self._aux_data
        leaves = {n: fields[n] for n in cls.leaf_fields if n in fields}
        if set(fields) - set(leaves):  # tables or statics change: check everything again
            tables, statics = aux
            aux = cls._check_aux(
                tuple(fields.get(n, t) for n, t in zip(cls.table_fields, tables, strict=True)),
                tuple(fields.get(n, v) for n, v in zip(cls.static_fields, statics,
                                                        strict=True)))
            leaves = {n: fields.get(n, getattr(self, n)) for n in cls.leaf_fields}
        cls._check_leaves(aux, leaves)
        children = tuple(leaves.get(n, getattr(self, n)) for n in cls.leaf_fields)
        return cls._unflatten(aux, children)

    # -- common properties -------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """Dtype of the stored values (and of the dense weight)."""
        return np.dtype(self.values.dtype)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        """In-memory bytes of the (padded, static-shape) arrays: values + tables + meta."""
        leaves = sum(int(np.prod(np.shape(getattr(self, n)))) * np.dtype(getattr(self, n).dtype)
                     .itemsize for n in self.leaf_fields)
        return leaves + sum(t.array.nbytes for t in self._tables.values())

    def storage_bytes(self) -> int:
        """Bytes needed to store the weight: values + indices + metadata, without the
        padding the static-shape layout adds (for the tile formats: rows beyond ``k_t`` and
        columns beyond a ragged last tile). Formats without padding return :attr:`nbytes`."""
        return self.nbytes

    def dense_bytes(self) -> int:
        """Bytes of the dense ``(K, N)`` weight in the values' dtype."""
        return int(self.shape[0]) * int(self.shape[1]) * self.dtype.itemsize

    def _decompress(self) -> Array:
        """The dense ``(K, N)`` weight, zeros where pruned (jit-able); the public form is
        :func:`tvwjax.decompress`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        tables = ", ".join(f"{n}={self._tables[n].array.shape}" for n in self.table_fields)
        v = self.values
        desc = f"{tuple(np.shape(v))} {v.dtype}" if hasattr(v, "dtype") else repr(v)
        return f"{type(self).__name__}(shape={self.shape}, values={desc}, {tables})"


# -- input checks shared by every format ------------------------------------------------------
def check_dense_and_mask(w: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a dense ``(K, N)`` floating weight and its bool mask; return numpy copies."""
    if val.is_traced(w) or val.is_traced(mask):
        raise TypeError("compress is eager (its output shapes depend on the mask's values): "
                        "call it outside jax.jit / transformations")
    w_np = np.asarray(w)
    if w_np.ndim != 2:
        raise ShapeError(f"w: expected a 2-D (K, N) weight (reshape kernels with "
                         f"tvwjax.as_matrix first), got shape {w_np.shape}")
    if not jnp.issubdtype(w_np.dtype, jnp.floating):
        raise DTypeError(f"w: expected a floating-point weight, got dtype {w_np.dtype}")
    if w_np.size == 0:
        raise ShapeError(f"w: cannot compress an empty weight of shape {w_np.shape}; expected "
                         "K >= 1 and N >= 1")
    m_np = np.asarray(mask)
    if m_np.shape != w_np.shape:
        raise ShapeError(f"mask: expected the weight's shape {w_np.shape}, got {m_np.shape}")
    m_np = val.bool_mask(m_np, "mask")
    bad = m_np & ~np.isfinite(w_np.astype(np.float32))
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise ScoreError(f"w: {int(bad.sum())} NaN or Inf value(s) at kept positions (first at "
                         f"({r}, {c})); expected finite weights")
    return w_np, m_np


__all__ = ["CompressedWeight", "StaticArray", "check_dense_and_mask"]
