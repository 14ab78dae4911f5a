"""Index tables are input (issue 15): every format rejects corrupted tables, statics and values
through its constructor, ``replace``, a hand-built pytree and a checkpoint restore; restore
accepts the templates users build (TrainState, eval_shape, NNX state, typed keys)."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

import tvwjax
from tvwjax import checkpoint
from tvwjax.errors import ConfigError, FormatError, TreeMismatchError, TvwError
from tvwjax.formats import BlockSparse, CompressedWeight, NMSparse, TileVectorWise, TileWise
from tvwjax.patterns import BW, NM, TVW, TW

K, N = 64, 37  # N ragged: the last tile has padding columns


def _compress(pattern, s, shape=(K, N), seed=0, dtype=np.float32):
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    mask = np.asarray(pattern.mask(jnp.abs(jnp.asarray(w, jnp.float32)), s))
    return tvwjax.compress(w, mask, pattern)


WEIGHTS = {
    "tw": lambda: _compress(TW(tile=8), 0.5),
    "bw": lambda: _compress(BW(8, 8), 0.5),
    "tvw": lambda: _compress(TVW(tile=8), 0.75),
    "nm": lambda: _compress(NM(), 0.5),
    "nm23": lambda: _compress(NM(2, 3), 1 / 3, shape=(63, N)),
}


@pytest.fixture(scope="module")
def weights():
    out = {name: make() for name, make in WEIGHTS.items()}
    # The corruptions below rely on these properties of the weights.
    for name in ("tw", "bw", "tvw"):
        cw = out[name]
        assert 2 <= cw.counts[0] < cw.rows.shape[1], "tile 0 needs kept and padding rows"
        assert cw.cols[-1, -1] == N, "the last tile needs padding columns"
    return out


def _fields(cw: CompressedWeight) -> dict:
    """Every field of ``cw`` (tables as writable numpy copies)."""
    out = {n: getattr(cw, n) for n in cw.leaf_fields + cw.static_fields}
    out.update({n: np.array(getattr(cw, n)) for n in cw.table_fields})
    return out


def _set(table, index, value, dtype=None):
    def edit(f):
        a = np.array(f[table], dtype=dtype)
        a[index] = value
        return {table: a}
    return edit


def _swap(table, i, j):
    def edit(f):
        a = f[table].copy()
        a[i], a[j] = a[j], a[i]
        return {table: a}
    return edit


def _count_up(f):            # counts[0] + 1: a padding row (pointing at 0) becomes "kept"
    c = f["counts"].copy()
    c[0] += 1
    return {"counts": c}


def _partial_block(f):       # drop the last kept row of tile 0: its block is no longer whole
    c, r = f["counts"].copy(), f["rows"].copy()
    c[0] -= 1
    r[0, c[0]] = 0
    return {"counts": c, "rows": r}


def _drop_tile(f):           # one tile fewer in every table and the values
    return {n: f[n][:-1] for n in ("rows", "cols", "counts", "values")}


def _kp_36(f):               # TVW: Kp=36, not a multiple of 8
    return {"rows": f["rows"][:, :36]}


TILE_CASES = [
    # (case, edit, message fragment)
    ("rows-out-of-range", _set("rows", (0, 0), 10_000_000),
     "rows table has index 10000000 at tile 0, compact row 0, expected 0 <= row < K=64"),
    ("rows-negative", _set("rows", (0, 0), -1), "rows table has index -1 at tile 0"),
    ("rows-unsorted", _swap("rows", (0, 0), (0, 1)), "rows table of tile 0 is not strictly"),
    ("rows-duplicate", lambda f: _set("rows", (0, 1), f["rows"][0, 0])(f),
     "rows table of tile 0 is not strictly increasing"),
    ("rows-padding", lambda f: _set("rows", (0, f["counts"][0]), 3)(f),
     "expected 0 (padding rows point at row 0)"),
    ("rows-fewer-tiles", lambda f: {"rows": f["rows"][:-1]}, "cols table has shape (5, 8), "
     "expected (4, 8)"),
    ("rows-rank", lambda f: {"rows": f["rows"].reshape(-1)}, "rows table must be 2-D"),
    ("rows-float", lambda f: {"rows": f["rows"].astype(np.float32)},
     "rows table must have an integer dtype, got float32"),
    ("rows-int64-overflow", _set("rows", (0, 0), 2**40, np.int64),
     "rows table holds 1099511627776, which does not fit its dtype int32"),
    ("cols-out-of-range", _set("cols", (0, 0), N + 1), "cols table has index 38 at tile 0"),
    ("cols-negative", _set("cols", (0, 0), -1), "cols table has index -1 at tile 0"),
    ("cols-unsorted", _swap("cols", (0, 0), (0, 1)), "cols table is not strictly increasing"),
    ("cols-duplicate", lambda f: _set("cols", (1, 0), f["cols"][0, 0])(f),
     "cols table is not strictly increasing over the tiles"),
    ("cols-real-after-padding", _set("cols", (-1, 0), N), "after a padding column (37)"),
    ("cols-shape", lambda f: {"cols": f["cols"][:, :-1]}, "cols table has shape (5, 7)"),
    ("counts-above-padded", lambda f: _set("counts", 0, f["rows"].shape[1] + 1)(f),
     "counts table has"),
    ("counts-negative", _set("counts", 0, -1), "counts table has -1 at tile 0"),
    ("counts-reads-padding", _count_up, "rows table of tile 0 is not strictly increasing"),
    ("counts-shape", lambda f: {"counts": f["counts"][:-1]}, "counts table has shape (4,)"),
    ("shape-K-too-small", lambda f: {"shape": (16, N)}, "expected 0 <= row < K=16"),
    ("shape-N-too-small", lambda f: {"shape": (K, 20)}, "cols table has index"),
    ("shape-not-a-pair", lambda f: {"shape": (K,)}, "shape must be a pair"),
    ("tile-mismatch", lambda f: {"tile": 16}, "cols table has shape (5, 8), expected (5, 16)"),
    ("values-shape", lambda f: {"values": f["values"][..., :-1]}, "values has shape"),
    ("values-int", lambda f: {"values": jnp.asarray(f["values"]).astype(jnp.int32)},
     "values must have a floating dtype, got int32"),
]
NM_CASES = [
    ("meta-shape", lambda f: {"meta": f["meta"][:-1]}, "meta table has shape (7, 37)"),
    ("meta-float", lambda f: {"meta": f["meta"].astype(np.float32)},
     "meta table must have an integer dtype"),
    ("meta-negative", _set("meta", (0, 0), -1, np.int32),
     "meta table holds -1, which does not fit its dtype uint8"),
    ("meta-duplicate", _set("meta", (0, 0), 0), "meta table repeats a position in group 0"),
    ("shape-K-not-multiple", lambda f: {"shape": (62, N)}, "expected a multiple of m=4"),
    ("nm-invalid", lambda f: {"nm": (4, 4)}, "nm must satisfy 1 <= n < m <= 4"),
    ("values-shape", lambda f: {"values": f["values"][:-1]}, "values has shape (31, 37)"),
    ("values-int", lambda f: {"values": jnp.asarray(f["values"]).astype(jnp.int32)},
     "values must have a floating dtype"),
]
CASES = (
    [("tw", *c) for c in TILE_CASES]
    + [("bw", *c) for c in TILE_CASES]
    + [("tvw", *c) for c in TILE_CASES if c[0] != "values-shape"]
    + [("tvw", "values-shape", lambda f: {"values": f["values"][:, :-2]},
        "values has shape (5, 18, 8), expected (5, 20, 8)"),
       ("tvw", "meta-duplicate", _set("meta", (0, 0, 0), 0),
        "meta table repeats a position in tile 0, group 0"),
       ("tvw", "meta-shape", lambda f: {"meta": f["meta"][:, :-1]}, "meta table has shape"),
       ("tvw", "meta-negative", _set("meta", (0, 0, 0), -1, np.int32),
        "does not fit its dtype uint8"),
       ("tvw", "rows-Kp-not-multiple-of-8", _kp_36, "Kp=36 padded rows per tile, expected a "
        "multiple of 8"),
       ("tvw", "nm-mismatch", lambda f: {"nm": (1, 4)}, "meta table has shape"),
       ("bw", "cols-not-the-block-column", _set("cols", (0, slice(None)), [1, 2, 3, 4, 5, 6, 7,
                                                                          N]),
        "cols table has 1 at tile 0, column 0, expected 0 (tile 0 is block column 0)"),
       ("bw", "rows-partial-block", _partial_block, "expected whole blocks"),
       ("bw", "tiles-fewer-than-block-columns", _drop_tile, "one per block column"),
       ("bw", "block-vs-tile", lambda f: {"block": (8, 4)}, "tile must equal the block "
        "columns 4")]
    + [("nm", *c) for c in NM_CASES]
    + [("nm23", "meta-position-out-of-range", _set("meta", (0, 0), 3),
        "meta table holds position 3 at value row 0, column 0, expected < m=3")]
)
IDS = [f"{fmt}-{case}" for fmt, case, _, _ in CASES]


def _expect(fmt_cls: type, fragment: str):
    return pytest.raises(FormatError, match=f"{fmt_cls.__name__}: .*{re.escape(fragment)}")


@pytest.mark.parametrize("fmt,case,edit,fragment", CASES, ids=IDS)
def test_constructor_rejects(weights, fmt, case, edit, fragment):
    cw = weights[fmt]
    fields = _fields(cw)
    with _expect(type(cw), fragment):
        type(cw)(**{**fields, **edit(fields)})


@pytest.mark.parametrize("fmt,case,edit,fragment", CASES, ids=IDS)
def test_replace_rejects(weights, fmt, case, edit, fragment):
    cw = weights[fmt]
    with _expect(type(cw), fragment):
        cw.replace(**edit(_fields(cw)))


@pytest.mark.parametrize("fmt,case,edit,fragment",
                         [c for c in CASES if not c[1].startswith("values")],
                         ids=[i for i, c in zip(IDS, CASES, strict=True)
                              if not c[1].startswith("values")])
def test_unchecked_aux_data_is_checked_on_unflatten(weights, fmt, case, edit, fragment):
    """A hand-built treedef's aux data (a plain tuple) reaches _unflatten: it is checked."""
    cw = weights[fmt]
    f = {**_fields(cw), **edit(_fields(cw))}
    aux = (tuple(f[n] for n in cw.table_fields), tuple(f[n] for n in cw.static_fields))
    with _expect(type(cw), fragment):
        type(cw)._unflatten(aux, (f["values"],))


# -- checkpoints: corrupt a good checkpoint's stored arrays / metadata -----------------------------
def _ck():
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


@pytest.fixture(scope="module")
def saved(weights, tmp_path_factory):
    """Per format: the raw ``arrays`` and ``meta`` items of a good checkpoint of it."""
    out = {}
    for name, cw in weights.items():
        path = checkpoint.save(tmp_path_factory.mktemp(name) / "good", {"w": cw})
        items = _ck().restore(path, ocp.args.Composite(arrays=ocp.args.StandardRestore(),
                                                       meta=ocp.args.JsonRestore()))
        out[name] = ({k: np.asarray(v) for k, v in items["arrays"].items()}, items["meta"])
    return out


def _write_edited(path: Path, arrays: dict, meta: dict, changes: dict, *,
                  update_meta: bool = True) -> Path:
    """Write a copy of a saved checkpoint with ``changes`` (tables, values, statics of leaf
    ``w``) in its stored arrays and (``update_meta``) its metadata."""
    arrays = dict(arrays)
    meta = {**meta, "leaves": [dict(e) for e in meta["leaves"]]}
    (entry,) = meta["leaves"]
    entry["static"], entry["tables"] = dict(entry["static"]), dict(entry["tables"])
    for name, v in changes.items():
        if name in entry["static"]:
            entry["static"][name] = list(v) if isinstance(v, tuple) else v
            continue
        v = np.asarray(v)
        m = {"shape": list(v.shape), "dtype": v.dtype.name}
        if update_meta:
            if name == "values":
                entry["values"] = m
            else:
                entry["tables"][name] = m
        arrays.pop(f"l0.{name}", None)
        if v.size:
            arrays[f"l0.{name}"] = v
    _ck().save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                        meta=ocp.args.JsonSave(meta)))
    return path


@pytest.mark.parametrize("fmt,case,edit,fragment", CASES, ids=IDS)
def test_restore_rejects(weights, saved, tmp_path, fmt, case, edit, fragment):
    cw = weights[fmt]
    arrays, meta = saved[fmt]
    bad = _write_edited(tmp_path / "bad", arrays, meta, edit(_fields(cw)))
    with pytest.raises(FormatError, match=f"^w: {type(cw).__name__}: .*{re.escape(fragment)}"):
        checkpoint.restore(bad)


def test_restore_into_a_valid_template_still_checks_the_tables(weights, saved, tmp_path):
    cw = weights["tw"]
    arrays, meta = saved["tw"]
    bad = _write_edited(tmp_path / "bad", arrays, meta,
                        _set("rows", (2, 0), 10_000_000)(_fields(cw)))
    for target in ({"w": cw}, jax.eval_shape(lambda: {"w": cw})):
        with pytest.raises(FormatError, match=r"w: TileWise: rows table has index 10000000 "
                                              r"at tile 2"):
            checkpoint.restore(bad, target)


def test_restore_rejects_arrays_that_disagree_with_the_metadata(weights, saved, tmp_path):
    cw = weights["tw"]
    arrays, meta = saved["tw"]
    bad = _write_edited(tmp_path / "a", arrays, meta, {"rows": cw.rows[:, :-1]},
                        update_meta=False)
    with pytest.raises(ConfigError, match=r"w: the stored array 'l0.rows' has shape \(5, 34\)"):
        checkpoint.restore(bad)
    bad = _write_edited(tmp_path / "b", arrays, meta, {"rows": cw.rows.astype(np.int8)},
                        update_meta=False)
    with pytest.raises(ConfigError, match="dtype int8, the checkpoint's metadata says"):
        checkpoint.restore(bad)


def test_restore_rejects_unknown_format_and_fields(saved, tmp_path):
    arrays, meta = saved["tw"]
    m = {**meta, "leaves": [{**meta["leaves"][0], "format": "Nope"}]}
    _ck().save(tmp_path / "a", ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                  meta=ocp.args.JsonSave(m)))
    with pytest.raises(ConfigError, match="unknown compressed format 'Nope'"):
        checkpoint.restore(tmp_path / "a")
    m = {**meta, "leaves": [{**meta["leaves"][0], "format": "TileVectorWise"}]}
    _ck().save(tmp_path / "b", ocp.args.Composite(arrays=ocp.args.StandardSave(arrays),
                                                  meta=ocp.args.JsonSave(m)))
    with pytest.raises(FormatError, match="lists tables"):
        checkpoint.restore(tmp_path / "b")


# -- valid weights: unchanged, and the checks cost nothing on JAX's own unflatten ------------------
@pytest.mark.parametrize("fmt", list(WEIGHTS))
def test_valid_weight_round_trips_unchanged(weights, tmp_path, fmt):
    cw = weights[fmt]
    path = checkpoint.save(tmp_path / "c", {"w": cw})
    for target in (None, {"w": cw}, jax.eval_shape(lambda: {"w": cw})):
        out = checkpoint.restore(path, target)["w"]
        assert type(out) is type(cw) and out._aux() == cw._aux()
        assert jax.tree.structure(out) == jax.tree.structure(cw)
        assert out.values.dtype == cw.values.dtype
        np.testing.assert_array_equal(np.asarray(out.values), np.asarray(cw.values))
    # replace with a valid array of another float dtype, and with the same tables: accepted
    assert cw.replace(values=cw.values.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert cw.replace(**{n: getattr(cw, n) for n in cw.table_fields})._aux() == cw._aux()


def test_jax_unflatten_does_not_recheck(weights, monkeypatch):
    cw = weights["tvw"]
    calls = []
    original = TileVectorWise._check_fields.__func__

    def counting(cls, tables, statics):
        calls.append(cls.__name__)
        return original(cls, tables, statics)

    monkeypatch.setattr(TileVectorWise, "_check_fields", classmethod(counting))
    f = jax.jit(lambda c: jax.tree.map(lambda v: 2 * v, c))
    for _ in range(3):
        out = f(cw)
    jax.tree.map(lambda v: v, cw)
    jax.eval_shape(lambda c: c, cw)
    out.replace(values=out.values * 0)
    assert calls == []
    cw.replace(rows=cw.rows)
    assert calls == ["TileVectorWise"]


def test_replace_inside_jit_checks_traced_values(weights):
    cw = weights["tw"]

    @jax.jit
    def bad(v):
        return cw.replace(values=v[:, :-1])

    with pytest.raises(FormatError, match="TileWise: values has shape"):
        bad(cw.values)
    ok = jax.jit(lambda v: cw.replace(values=v * 2))(cw.values)
    np.testing.assert_array_equal(np.asarray(ok.values), 2 * np.asarray(cw.values))


def test_non_array_values_and_traced_tables_are_rejected(weights):
    cw = weights["nm"]
    with pytest.raises(FormatError, match="NMSparse: values must be an array, got list"):
        cw.replace(values=np.asarray(cw.values).tolist())

    @jax.jit
    def traced(meta):
        return NMSparse(values=cw.values, meta=meta, shape=cw.shape, nm=cw.nm)

    with pytest.raises(FormatError, match="meta table must be a concrete"):
        traced(jnp.asarray(cw.meta))
    assert issubclass(FormatError, TvwError) and tvwjax.FormatError is FormatError


def test_every_format_is_covered():
    covered = {type(make()).__name__ for make in WEIGHTS.values()}
    assert covered == set(tvwjax.formats.FORMATS) == {c.__name__ for c in (
        TileWise, BlockSparse, TileVectorWise, NMSparse)}


# -- templates users build ------------------------------------------------------------------
def test_compressed_leaf_into_another_shape_or_dtype_raises(weights, tmp_path):
    cw = weights["tw"]
    path = checkpoint.save(tmp_path / "c", {"w": cw})
    other_shape = _compress(TW(tile=8), 0.5, shape=(K, N + 3))
    with pytest.raises(TreeMismatchError, match=r"w: target TileWise has shape=\(64, 40\), "
                                                r"the checkpoint holds shape=\(64, 37\)"):
        checkpoint.restore(path, {"w": other_shape})
    with pytest.raises(TreeMismatchError, match="w: target TileWise has tile=16"):
        checkpoint.restore(path, {"w": _compress(TW(tile=16), 0.5)})
    with pytest.raises(TreeMismatchError, match="values of dtype bfloat16, the checkpoint "
                                                "holds dtype float32"):
        checkpoint.restore(path, {"w": cw.replace(values=cw.values.astype(jnp.bfloat16))})
    with pytest.raises(TreeMismatchError, match="target is a BlockSparse"):
        checkpoint.restore(path, {"w": weights["bw"]})
    with pytest.raises(TreeMismatchError, match="w: target has dtype bfloat16"):
        checkpoint.restore(path, {"w": jax.ShapeDtypeStruct((K, N), jnp.bfloat16)})
    with pytest.raises(TreeMismatchError, match=r"w: target shape \(64, 36\) does not match"):
        checkpoint.restore(path, {"w": jnp.zeros((K, N - 1))})
    dense = checkpoint.save(tmp_path / "d", {"w": jnp.zeros((K, N))})
    with pytest.raises(TreeMismatchError, match="w: target is a TileWise, the checkpoint "
                                                "holds a dense array"):
        checkpoint.restore(dense, {"w": cw})


def _train_state():
    return train_state.TrainState.create(
        apply_fn=lambda p, x: x @ p["w"], params={"w": jnp.ones((4, 3))}, tx=optax.adam(1e-2))


def test_train_state_create_templates(tmp_path):
    state = _train_state()
    assert isinstance(state.step, int)                     # Python int in the template
    grads = {"w": jnp.full((4, 3), 0.5)}
    stepped = jax.jit(lambda s: s.apply_gradients(grads=grads))(state)
    stepped = jax.jit(lambda s: s.apply_gradients(grads=grads))(stepped)
    assert stepped.step.dtype == jnp.int32
    path = checkpoint.save(tmp_path / "c", stepped)
    out = checkpoint.restore(path, _train_state())
    assert type(out) is train_state.TrainState and out.step == 2 and isinstance(out.step, int)
    np.testing.assert_array_equal(np.asarray(out.params["w"]), np.asarray(stepped.params["w"]))
    out = checkpoint.restore(path, jax.eval_shape(_train_state))
    assert out.step.dtype == jnp.int32 and int(out.step) == 2
    # and back: a Python int step (int64 on disk) into an int32 template
    fresh = checkpoint.save(tmp_path / "f", _train_state())
    out = checkpoint.restore(fresh, stepped)
    assert out.step.dtype == jnp.int32 and int(out.step) == 0
    # the restored state trains on
    out = jax.jit(lambda s: s.apply_gradients(grads=grads))(checkpoint.restore(path, state))
    assert int(out.step) == 3


def test_integer_widths_cast_when_they_fit(tmp_path):
    path = checkpoint.save(tmp_path / "c", {"a": np.int64(7), "b": np.arange(3, dtype=np.int32),
                                           "big": np.int64(2**40), "f": jnp.float32(1.5)})
    out = checkpoint.restore(path, {"a": jnp.int32(0), "b": np.zeros(3, np.int16),
                                    "big": np.int64(0), "f": jnp.float32(0)})
    assert out["a"].dtype == jnp.int32 and int(out["a"]) == 7
    assert out["b"].dtype == jnp.int16
    assert int(out["big"]) == 2**40                         # not truncated without x64
    with pytest.raises(TreeMismatchError, match="big: the saved int64 value 1099511627776 "
                                                "does not fit the target's dtype int32"):
        checkpoint.restore(path, {"a": 0, "b": np.zeros(3, np.int32), "big": jnp.int32(0),
                                  "f": jnp.float32(0)})
    with pytest.raises(TreeMismatchError, match="a: target has shape .* dtype float32, the "
                                                "checkpoint holds shape .* dtype int64"):
        checkpoint.restore(path, {"a": jnp.float32(0), "b": np.zeros(3, np.int32),
                                  "big": np.int64(0), "f": jnp.float32(0)})
    with pytest.raises(TreeMismatchError, match="f: target is a Python int"):
        checkpoint.restore(path, {"a": 0, "b": np.zeros(3, np.int32), "big": 0, "f": 0})
    with pytest.raises(TreeMismatchError, match="step: target is a Python float"):
        checkpoint.restore(checkpoint.save(tmp_path / "s", _train_state()),
                           _train_state().replace(step=0.0))


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.a = tvwjax.nn.SparseLinear(32, 24, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.b = tvwjax.nn.SparseLinear(24, 8, rngs=rngs)

    def __call__(self, x):
        return self.b(self.drop(jnp.tanh(self.a(x))))


def _compressed_net(seed: int) -> _Net:
    net = _Net(nnx.Rngs(seed, dropout=seed + 1))
    pattern = TW(tile=8)
    masks = tvwjax.masks(nnx.state(net, nnx.Param), pattern, 0.5)
    nnx.update(net, tvwjax.apply_masks(nnx.state(net, nnx.Param), masks))
    return tvwjax.nn.compress_model(net, masks, pattern)


def test_nnx_state_with_compressed_kernels_and_rng_keys(tmp_path):
    net = _compressed_net(0)
    assert isinstance(net.a.kernel.get_value(), TileWise)
    path = checkpoint.save(tmp_path / "c", nnx.state(net))
    x = jax.random.normal(jax.random.key(9), (4, 32))
    net.eval()
    want = np.asarray(net(x))
    # a model built and compressed the same way from another seed (other tables)
    other = _compressed_net(1)
    nnx.update(other, checkpoint.restore(path, nnx.state(other)))
    other.eval()
    np.testing.assert_array_equal(np.asarray(other(x)), want)
    assert other.a.kernel.get_value()._aux() == net.a.kernel.get_value()._aux()
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(other.drop.rngs.key[...])),
                                  np.asarray(jax.random.key_data(net.drop.rngs.key[...])))
    # an abstract, uncompressed model: its dense kernel templates take the compressed weights
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _Net(nnx.Rngs(0, dropout=1))))
    merged = nnx.merge(graphdef, checkpoint.restore(path, abstract))
    merged.eval()
    np.testing.assert_array_equal(np.asarray(merged(x)), want)


def test_typed_prng_keys(tmp_path):
    tree = {"k": jax.random.key(3), "ks": jax.random.split(jax.random.key(4), 3),
            "rbg": jax.random.key(5, impl="rbg"), "raw": jax.random.key_data(jax.random.key(6))}
    path = checkpoint.save(tmp_path / "c", tree)
    for target in (None, tree, jax.eval_shape(lambda: tree)):
        out = checkpoint.restore(path, target)
        for name in ("k", "ks", "rbg"):
            assert out[name].dtype == tree[name].dtype and out[name].shape == tree[name].shape
            np.testing.assert_array_equal(np.asarray(jax.random.key_data(out[name])),
                                          np.asarray(jax.random.key_data(tree[name])))
        assert out["raw"].dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(jax.random.normal(out["k"], (2,))),
                                  np.asarray(jax.random.normal(tree["k"], (2,))))
    with pytest.raises(TreeMismatchError, match="k: target is an array of shape \\(2,\\) and "
                                                "dtype uint32, the checkpoint holds a typed"):
        checkpoint.restore(path, {**tree, "k": jax.random.key_data(tree["k"])})
    with pytest.raises(TreeMismatchError, match="raw: target is a typed PRNG key array"):
        checkpoint.restore(path, {**tree, "raw": jax.random.key(0)})
    with pytest.raises(TreeMismatchError, match="rbg: target is a typed PRNG key array of "
                                                "shape \\(\\) and dtype key<fry>"):
        checkpoint.restore(path, {**tree, "rbg": jax.random.key(0)})
    with pytest.raises(TreeMismatchError, match="ks: .*shape \\(2,\\)"):
        checkpoint.restore(path, {**tree, "ks": jax.random.split(jax.random.key(0), 2)})


@pytest.mark.parametrize("pattern", [TW(tile=4), TVW(tile=4), NM(), BW(4, 4)],
                         ids=lambda p: type(p).__name__)
def test_all_pruned_weights_pass_the_checks(pattern, tmp_path):
    w = np.ones((16, 10), np.float32)
    cw = tvwjax.compress(w, np.zeros(w.shape, bool), pattern)
    out = checkpoint.restore(checkpoint.save(tmp_path / "c", {"w": cw}))["w"]
    assert type(out) is type(cw) and out._aux() == cw._aux()
    np.testing.assert_array_equal(np.asarray(tvwjax.decompress(out)), np.zeros((16, 10)))
    np.testing.assert_array_equal(np.asarray(jax.jit(tvwjax.decompress)(out)), np.zeros((16, 10)))
