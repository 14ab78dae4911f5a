"""tvwjax.cpu_kernel: the compiled CPU TW kernel (XLA FFI) equals ``x @ decompress(w)`` at
awkward shapes (M in {1, 3, 17, 130, 517}; K, N not multiples of the tile; empty tiles;
a tile keeping all rows; uncovered columns), for float32 / bfloat16 / float16, under jit and
vmap, with gradients equal to those of the dense reference; every instruction-set variant
this CPU runs; errors; the report. The suite fails if the extension was not built."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.layout import tiles_to_dense
from tvwjax import cpu_kernel, decompress
from tvwjax.errors import ConfigError, DTypeError, ShapeError
from tvwjax.formats import BlockSparse, TileWise

MS = (1, 3, 17, 130, 517)
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}


def test_extension_built():
    """The README's install builds the extension; a suite that only ran XLA would fail."""
    assert cpu_kernel.available(), f"CPU kernel not available: {cpu_kernel.reason()}"
    rep = cpu_kernel.report()
    assert rep["kernel"] == "ffi" and rep["isa"] in rep["supported_isas"]
    assert rep["reason"] == "" and "generic" in rep["supported_isas"]


def _awkward(k=203, n=150, tile=32, dtype=jnp.float32, seed=0):
    """A TW weight with K, N not multiples of the tile, tile 1 empty, tile 2 keeping every
    row, tile 3 keeping one row, a ragged last tile and columns 120..127 in no tile (tile
    columns then not contiguous)."""
    rng = np.random.default_rng(seed)
    real = np.array([c for c in range(n) if not 120 <= c < 128])
    groups = [real[i:i + tile] for i in range(0, real.size, tile)]
    kinds = [rng.random(k) < 0.4, np.zeros(k, bool), np.ones(k, bool),
             np.eye(1, k, 7, bool)[0]]
    keep = [kinds[i] if i < len(kinds) else rng.random(k) < 0.6 for i in range(len(groups))]
    rows = [np.flatnonzero(kp) for kp in keep]
    kp = max(r.size for r in rows)
    t = len(groups)
    rows_t = np.zeros((t, kp), np.int32)
    cols_t = np.full((t, tile), n, np.int32)
    vals = np.zeros((t, kp, tile), np.float32)
    for i, (r, c) in enumerate(zip(rows, groups, strict=True)):
        rows_t[i, :r.size] = r
        cols_t[i, :c.size] = c
        vals[i, :r.size, :c.size] = rng.standard_normal((r.size, c.size))
    counts = np.array([r.size for r in rows], np.int32)
    return TileWise(values=jnp.asarray(vals, dtype), rows=rows_t, cols=cols_t, counts=counts,
                    shape=(k, n), tile=tile)


def _x(m, k, dtype, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((m, k)), dtype)


def _ref(x, w):
    return jnp.matmul(x.astype(jnp.float32), decompress(w).astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)


def _close(y, ref, dtype):
    scale = float(jnp.max(jnp.abs(ref))) + 1.0
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref),
                               atol=TOL[dtype] * scale, rtol=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("m", MS)
def test_matches_dense(m, dtype):
    w = _awkward(dtype=dtype)
    assert (w.counts == 0).any() and (w.counts == w.shape[0]).any()
    x = _x(m, w.shape[0], dtype)
    y = cpu_kernel.tw_matmul_cpu(x, w)
    assert y.dtype == dtype and y.shape == (m, w.shape[1])
    _close(y, _ref(x, w), dtype)
    assert not np.asarray(y[:, 120:128], np.float32).any()  # columns in no tile


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_isa(isa):
    if isa not in cpu_kernel.report()["supported_isas"]:
        pytest.skip(f"{isa} not supported on this CPU")
    try:
        cpu_kernel.set_isa(isa)
        assert cpu_kernel.isa() == isa
        for dtype in (jnp.float32, jnp.bfloat16):
            w = _awkward(dtype=dtype, tile=48, seed=3)
            for m in (1, 5, 40, 150):
                x = _x(m, w.shape[0], dtype, seed=m)
                _close(cpu_kernel.tw_matmul_cpu(x, w), _ref(x, w), dtype)
    finally:
        cpu_kernel.set_isa(None)


@pytest.mark.parametrize("k", [203, 1024])
def test_register_panel_tiles_every_row_path(k):
    """Tiles of whole register panels (64 and 128 columns: float32 output accumulated in
    place in y where a tile's columns are contiguous, through scratch where they are not),
    on every instruction set, across the row paths: weights read in place in chunks of
    compact rows, a partial last chunk included, up to 32 rows in float32 (x through the row
    table) and up to 6 in bfloat16 (x gathered into packed slivers per chunk); packed panels
    beyond (float32: x broadcast in place through the row table; bfloat16: x gathered while
    packing, from 48 rows read through x^T). K = 1024 puts the rows of x 4 KiB apart."""
    isas = cpu_kernel.report()["supported_isas"]
    try:
        for tile in (64, 128):
            for dtype in (jnp.float32, jnp.bfloat16):
                w = _awkward(k=k, n=600, tile=tile, dtype=dtype, seed=tile)
                assert (w.counts == 0).any() and (w.counts == k).any()
                for isa in isas:
                    cpu_kernel.set_isa(isa)
                    for m in (2, 6, 7, 17, 32, 33, 47, 48, 130):
                        x = _x(m, k, dtype, seed=m)
                        _close(cpu_kernel.tw_matmul_cpu(x, w), _ref(x, w), dtype)
    finally:
        cpu_kernel.set_isa(None)


@pytest.mark.parametrize("tile", [75, 168])
def test_wide_tiles_every_column_path(tile):
    """Tiles wider than one vector-register set (the kernel's column chunks of 64 / 128,
    then single vectors, then scalar columns), M=1 (the GEMV with its row streams and a
    remainder stream) and small M, on every instruction set this CPU runs."""
    isas = cpu_kernel.report()["supported_isas"]
    try:
        for isa in isas:
            cpu_kernel.set_isa(isa)
            for dtype in (jnp.float32, jnp.bfloat16):
                w = _awkward(k=203, n=700, tile=tile, dtype=dtype, seed=tile)
                for m in (1, 2, 7):
                    x = _x(m, w.shape[0], dtype, seed=m)
                    _close(cpu_kernel.tw_matmul_cpu(x, w), _ref(x, w), dtype)
    finally:
        cpu_kernel.set_isa(None)


def test_block_sparse_and_one_thread():
    rng = np.random.default_rng(5)
    wd = rng.standard_normal((260, 300)).astype(np.float32)
    mask = np.zeros((260, 300), bool)
    mask[16:48, :64] = mask[192:224, 128:160] = True
    bs = BlockSparse.from_dense(wd, mask, block=(16, 32))
    x = _x(19, 260, jnp.float32)
    _close(cpu_kernel.tw_matmul_cpu(x, bs), _ref(x, bs), jnp.float32)
    w = _awkward()
    x = _x(130, w.shape[0], jnp.float32)
    try:
        cpu_kernel.set_max_threads(1)
        y1 = cpu_kernel.tw_matmul_cpu(x, w)
    finally:
        cpu_kernel.set_max_threads(0)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(cpu_kernel.tw_matmul_cpu(x, w)))


def test_last_call_reports_the_threads_it_used():
    """``report()["last_call"]`` describes the latest call: one worker with the cap at 1 (no
    pool item), and at most the pool's threads otherwise, the first pool item's start
    inside the call."""
    w = _awkward()
    x = _x(130, w.shape[0], jnp.float32)
    layer = jax.jit(lambda x: cpu_kernel.tw_matmul_cpu(x, w) + 1.0)
    try:
        cpu_kernel.set_max_threads(1)
        jax.block_until_ready(layer(x))
        one = cpu_kernel.report()["last_call"]
    finally:
        cpu_kernel.set_max_threads(0)
    assert one["workers"] == 1 and one["helper_items"] == 0
    assert one["helper_start_us"] == -1.0 and one["call_us"] > 0
    for _ in range(3):
        jax.block_until_ready(layer(x))
        rep = cpu_kernel.report()["last_call"]
        assert rep["pool_threads"] >= 1 and 1 <= rep["workers"] <= max(1, rep["pool_threads"])
        assert rep["call_us"] > 0
        if rep["helper_items"]:
            assert 0 <= rep["helper_start_us"] <= rep["call_us"]
        else:
            assert rep["helper_start_us"] == -1.0


def test_dtypes_promote_like_matmul():
    w32 = _awkward()
    wbf = _awkward(dtype=jnp.bfloat16)
    x = _x(17, w32.shape[0], jnp.float32)
    y = cpu_kernel.tw_matmul_cpu(x, wbf)           # f32 x bf16 -> f32
    assert y.dtype == jnp.float32
    _close(y, _ref(x, wbf), jnp.float32)
    xh = x.astype(jnp.float16)
    y = cpu_kernel.tw_matmul_cpu(xh, w32.replace(values=w32.values.astype(jnp.float16)))
    assert y.dtype == jnp.float16
    _close(y, _ref(xh, w32), jnp.float16)
    assert cpu_kernel.tw_matmul_cpu(x[:0], w32).shape == (0, w32.shape[1])


def test_jit_and_vmap():
    w = _awkward()
    k = w.shape[0]
    f = jax.jit(cpu_kernel.tw_matmul_cpu)
    x = _x(17, k, jnp.float32)
    _close(f(x, w), _ref(x, w), jnp.float32)
    xb = jnp.stack([_x(17, k, jnp.float32, seed=s) for s in range(3)])
    yb = jax.jit(jax.vmap(cpu_kernel.tw_matmul_cpu, in_axes=(0, None)))(xb, w)
    _close(yb, jnp.einsum("bmk,kn->bmn", xb, decompress(w)), jnp.float32)
    # A batch of weights (same tables, batched values) against one x, and both batched.
    vb = jnp.stack([w.values, 2.0 * w.values])
    fv = jax.vmap(lambda v, x: cpu_kernel.tw_matmul_cpu(x, w.replace(values=v)),
                  in_axes=(0, None))
    yv = jax.jit(fv)(vb, x)
    _close(yv[1], 2.0 * _ref(x, w), jnp.float32)
    fvx = jax.vmap(lambda v, x: cpu_kernel.tw_matmul_cpu(x, w.replace(values=v)))
    yvx = fvx(vb, xb[:2])
    _close(yvx[1], 2.0 * _ref(xb[1], w), jnp.float32)


def _dense_loss(x, values, w, c):
    wd = tiles_to_dense(values, w.rows, w.cols, *w.shape, w.counts)
    return jnp.sum(jnp.matmul(x, wd, precision=jax.lax.Precision.HIGHEST) * c)


@pytest.mark.parametrize("m", [1, 17, 130])
def test_gradients(m):
    w = _awkward()
    x = _x(m, w.shape[0], jnp.float32)
    c = _x(m, w.shape[1], jnp.float32, seed=9)

    def loss(x, values):
        return jnp.sum(cpu_kernel.tw_matmul_cpu(x, w.replace(values=values)) * c)

    gx, gv = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w.values)
    rx, rv = jax.grad(_dense_loss, argnums=(0, 1))(x, w.values, w, c)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(gv), np.asarray(rv), atol=1e-3, rtol=1e-4)
    pad = np.arange(w.values.shape[1])[None, :] >= w.counts[:, None]
    assert not np.asarray(gv)[pad].any()  # padding rows get no gradient
    # Per-example gradients: grad under vmap.
    xs = jnp.stack([x, 2 * x])
    gxs = jax.vmap(jax.grad(loss), in_axes=(0, None))(xs, w.values)
    np.testing.assert_allclose(np.asarray(gxs[1]), np.asarray(rx), atol=1e-3, rtol=1e-4)


def test_bad_inputs():
    w = _awkward()
    with pytest.raises(ShapeError):
        cpu_kernel.tw_matmul_cpu(jnp.ones((3, w.shape[0] + 1)), w)
    with pytest.raises(ShapeError):
        cpu_kernel.tw_matmul_cpu(jnp.ones((w.shape[0],)), w)
    with pytest.raises(DTypeError):
        cpu_kernel.tw_matmul_cpu(jnp.ones((3, w.shape[0]), jnp.int32), w)
    with pytest.raises(ConfigError):
        cpu_kernel.tw_matmul_cpu(jnp.ones((3, w.shape[0])), jnp.ones(w.shape))
    assert cpu_kernel.unsupported(jnp.ones((3, 4), jnp.int32), w) is not None
    assert cpu_kernel.unsupported(jnp.ones((3, 4)), jnp.ones((4, 4))) is not None
    assert cpu_kernel.unsupported(jnp.ones((3, w.shape[0])), w) is None
    with pytest.raises(ValueError):
        cpu_kernel.set_isa("sse9")


def test_disabled_reports_why():
    env = dict(os.environ, TVWJAX_CPU_KERNEL="0", JAX_PLATFORMS="cpu")
    code = ("import tvwjax.cpu_kernel as c; r = c.report(); "
            "assert not c.available() and r['kernel'] == 'xla' and 'TVWJAX_CPU_KERNEL' in "
            "r['reason'], r; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flax_modules_run_the_kernel(dtype):
    """SparseDense (Linen) and SparseLinear (NNX) under jit reach the kernel through
    tvwjax.matmul (the compiled module holds its custom call) and equal the masked dense
    layer."""
    from flax import nnx

    import tvwjax
    from tvwjax.nn import SparseDense, SparseLinear

    assert tvwjax.backends()["tile_formats_cpu"] == "ffi"
    w = _awkward(dtype=dtype)
    x = _x(17, 203, dtype)
    linen = jax.jit(SparseDense(150, use_bias=False).apply)
    assert cpu_kernel.TARGET in linen.lower({"params": {"kernel": w}}, x).as_text()
    layer = SparseLinear(203, 150, use_bias=False, rngs=nnx.Rngs(0))
    layer.kernel.set_value(w)
    graphdef, state = nnx.split(layer)
    nnx_apply = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))
    assert cpu_kernel.TARGET in nnx_apply.lower(state, x).as_text()
    for y in (linen({"params": {"kernel": w}}, x), nnx_apply(state, x)):
        assert y.dtype == dtype
        _close(y, _ref(x, w), dtype)


@pytest.mark.parametrize("m", [1, 5, 60])
@pytest.mark.parametrize("table", ["rows_high", "rows_negative", "counts", "cols",
                                   "cols_padding_first"])
def test_the_kernel_rejects_tables_out_of_range(table, m):
    """The kernel's own second look at the index tables (the formats checked them already):
    an index out of range is an error naming the table, never a read out of bounds. Rows are
    checked per tile by the worker that computes it, so a bad row in any tile is found, at
    M = 1, small M and the x^T path alike."""
    from tvwjax.formats import StaticArray

    w = _awkward()
    rows = np.array(w.static_table("rows").array)
    cols = np.array(w.static_table("cols").array)
    counts = np.array(w.static_table("counts").array)
    last = int(np.flatnonzero(counts)[-1])
    if table == "rows_high":
        rows[last, counts[last] - 1] = w.shape[0]
    elif table == "rows_negative":
        rows[0, 0] = -1
    elif table == "counts":
        counts[-1] = rows.shape[1] + 1
    elif table == "cols":
        cols[1, 0] = w.shape[1] + 1
    else:  # padding before a real column: the items write a tile's leading real columns
        cols[0, 0] = w.shape[1]
    spec = cpu_kernel._Spec(StaticArray(rows), StaticArray(cols), StaticArray(counts),
                            *w.shape)
    x = _x(m, w.shape[0], jnp.float32)
    what = {"rows_high": r"rows out of \[0, ", "rows_negative": r"rows out of \[0, ",
            "cols_padding_first": r"cols: a tile's padding \(N\) before a real column"
            }.get(table, rf"{table} out of \[0, ")
    with pytest.raises(Exception, match=what):
        jax.block_until_ready(cpu_kernel._ffi(spec, x, w.compact_values()))


def test_kernel_ab_times_each_build_with_its_own_trace(tmp_path):
    """benchmarks.kernel_ab.bound_for: one function (a model's apply, say) jitted for two
    builds runs each build, not the first build's trace twice (jax.jit caches traces by
    function). Two copies of the extension at distinct paths are two libraries, each with
    its own last-call record."""
    import shutil

    from benchmarks import kernel_ab
    from tvwjax import _tw_cpu

    w = _awkward()
    x = _x(40, w.shape[0], jnp.float32)

    def model(x):  # the same function object for both builds
        return cpu_kernel.tw_matmul_cpu(x, w) * 2.0

    builds = {}
    for tag in ("a", "b"):
        path = tmp_path / tag / Path(_tw_cpu.__file__).name
        path.parent.mkdir()
        shutil.copy(_tw_cpu.__file__, path)
        builds[tag] = kernel_ab.load_build(tag, str(path))
    for tag, (target, module) in builds.items():
        assert module.last_call()["call_us"] == 0  # not called yet
        call = kernel_ab.bound_for(target, model, x)
        assert module.last_call()["call_us"] > 0, tag
        _close(call() / 2.0, _ref(x, w), jnp.float32)


def test_kernel_ab_runs_a_second_copy_of_the_extension():
    """benchmarks.kernel_ab (builds compared in one process): a copy of the installed
    extension loaded under a target of its own computes the product, reports its own last
    call, and the default target is back after the block."""
    from benchmarks import kernel_ab
    from tvwjax import _tw_cpu

    target, module = kernel_ab.load_build("copy", _tw_cpu.__file__)
    assert module is not _tw_cpu and target != cpu_kernel.TARGET
    w = _awkward()
    x = _x(130, w.shape[0], jnp.float32)
    with kernel_ab.tracing_with(target):
        f = jax.jit(lambda x: cpu_kernel.tw_matmul_cpu(x, w) + 1.0)
        assert target in f.lower(x).as_text()
        y = f(x)
    _close(y - 1.0, _ref(x, w), jnp.float32)
    assert module.last_call()["call_us"] > 0
    assert cpu_kernel.TARGET == "tvwjax_tw_matmul_cpu"
    assert target not in jax.jit(lambda x: cpu_kernel.tw_matmul_cpu(x, w)).lower(x).as_text()
