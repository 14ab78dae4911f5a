"""Tests of the TW / TVW Pallas kernels on the CPU.

Two ways without a GPU: interpret mode (the kernel body executed on the CPU) compared with the
plain-jnp references and with the masked dense product ``x @ (mask * W)`` (forward and
gradients); and cross-lowering for the ``cuda`` platform, reading the serialized Triton IR out
of the exported module. Tile data is built here from random kept-row sets, independent of
``tvwjax`` (``pallas_kernels`` stands alone).
"""

from __future__ import annotations

import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.interpreters import mlir
from jax._src.lib.mlir import ir
from jax._src.pallas.triton import lowering as triton_lowering

from pallas_kernels import (
    BlockConfig,
    KernelConfigError,
    KernelDTypeError,
    KernelShapeError,
    tiles_to_dense,
    tvw_block_config,
    tvw_compact_blocks,
    tvw_matmul,
    tvw_matmul_reference,
    tw_block_config,
    tw_matmul,
    tw_matmul_reference,
)
from pallas_kernels.nm_codec import nm_compress, nm_decompress, pack_index, unpack_index

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
# Relative tolerance (of max |reference|) per dtype: the kernel and the reference both
# accumulate in float32 and round once, so only summation order and that rounding differ.
RTOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1.6e-2,
        jnp.dtype(jnp.float16): 2e-3}


def _assert_close(out, ref, dtype) -> None:
    out = np.asarray(jnp.asarray(out, jnp.float32))
    ref = np.asarray(jnp.asarray(ref, jnp.float32))
    assert out.shape == ref.shape
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out, ref, rtol=0, atol=RTOL[jnp.dtype(dtype)] * scale)


def _two_of_four(score: np.ndarray) -> np.ndarray:
    """2:4 keep-mask along axis 0: the 2 largest of every 4 rows per column."""
    rows, cols = score.shape
    g = score.reshape(rows // 4, 4, cols)
    rank = np.argsort(np.argsort(-g, axis=1, kind="stable"), axis=1, kind="stable")
    return (rank < 2).reshape(rows, cols)


def _tiles(rng, k, n, g, kp, *, tvw: bool, dtype, col_keep=None, empty=()):
    """Random TW / TVW tile data with kept-row counts differing between tiles.

    Columns are tiled in order after optional column pruning (``col_keep``), the last tile
    ragged; padding columns are ``n``. Tile 0 keeps ``kp`` rows (all of K when ``kp == k``),
    the tiles in ``empty`` none. Returns a dict with the tile arrays and the dense masked
    weight ``w`` (K, N) in float32 that they encode.
    """
    keep = np.ones(n, bool) if col_keep is None else col_keep
    kept_cols = np.flatnonzero(keep)
    t = -(-len(kept_cols) // g)
    w = np.zeros((k, n), np.float32)
    rows = np.zeros((t, kp), np.int32)
    cols = np.full((t, g), n, np.int32)
    counts = np.zeros(t, np.int32)
    blocks = np.zeros((t, kp, g), np.float32)
    masks = np.zeros((t, kp, g), bool)
    for i in range(t):
        kt = 0 if i in empty else int(rng.integers(1, kp + 1)) if i else kp
        r = np.sort(rng.choice(k, kt, replace=False))
        c = kept_cols[i * g : (i + 1) * g]
        rows[i, :kt], cols[i, : len(c)], counts[i] = r, c, kt
        blk = np.zeros((kp, g), np.float32)
        blk[:kt, : len(c)] = rng.standard_normal((kt, len(c)))
        blk = np.asarray(jnp.asarray(blk, dtype).astype(jnp.float32))  # representable values
        mask = np.zeros((kp, g), bool)
        mask[:kt, : len(c)] = True
        if tvw:
            score = np.abs(blk) + 1e-3 * rng.random(blk.shape)
            mask &= _two_of_four(score)
        blocks[i], masks[i] = blk * mask, mask
        w[np.ix_(r, c)] = blocks[i][:kt, : len(c)]
    out = dict(rows=jnp.asarray(rows), cols=jnp.asarray(cols), counts=jnp.asarray(counts),
               w=w, n=n)
    if tvw:
        pairs = zip(blocks, masks, strict=True)
        comp = [nm_compress(jnp.asarray(b), jnp.asarray(m)) for b, m in pairs]
        out["values"] = jnp.stack([v for v, _ in comp]).astype(dtype)
        out["meta"] = jnp.stack([pack_index(ix) for _, ix in comp])
    else:
        out["values"] = jnp.asarray(blocks, dtype)
    return out


def _x(rng, m, k, dtype):
    return jnp.asarray(rng.standard_normal((m, k)), dtype)


def _masked_dense(x, d):
    return jnp.dot(x.astype(jnp.float32), jnp.asarray(d["w"]),
                   precision=jax.lax.Precision.HIGHEST)


def _run(d, x, *, tvw: bool, **kw):
    args = (x, d["values"], d["meta"]) if tvw else (x, d["values"])
    op = tvw_matmul if tvw else tw_matmul
    return op(*args, d["rows"], d["cols"], n_out=d["n"], **kw)


def _reference(d, x, *, tvw: bool, **kw):
    args = (x, d["values"], d["meta"]) if tvw else (x, d["values"])
    op = tvw_matmul_reference if tvw else tw_matmul_reference
    return op(*args, d["rows"], d["cols"], n_out=d["n"], **kw)


# --------------------------------------------------------------------------- interpret mode

# (M, K, N, G, Kp, block_m): M = 1; M not a multiple of block_m; N not a multiple of G.
SHAPES = [(1, 40, 37, 16, 24, None), (19, 72, 50, 16, 32, 16)]


@pytest.mark.parametrize("tvw", [False, True], ids=["tw", "tvw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M{}_K{}_N{}_G{}_Kp{}".format(*s))
def test_interpret_matches_reference_and_masked_dense(shape, dtype, tvw):
    m, k, n, g, kp, block_m = shape
    rng = np.random.default_rng(zlib.crc32(repr((shape, tvw)).encode()))
    d = _tiles(rng, k, n, g, kp, tvw=tvw, dtype=dtype)
    x = _x(rng, m, k, dtype)
    out = _run(d, x, tvw=tvw, config=BlockConfig(block_m=block_m), interpret=True)
    ref = _reference(d, x, tvw=tvw)
    assert out.shape == (m, n) and out.dtype == jnp.dtype(dtype)
    assert float(jnp.abs(ref.astype(jnp.float32)).max()) > 0.1  # not trivially zero
    _assert_close(out, ref, dtype)
    _assert_close(out, _masked_dense(x, d), dtype)


@pytest.mark.parametrize("tvw", [False, True], ids=["tw", "tvw"])
def test_counts_bound_the_loop_and_column_pruning(tvw):
    """Per-tile counts (dynamic trip counts), pruned output columns (zero), G = 12 (padded to
    16), Kp spanning two K steps for TW (block_k 16, Kp 24 -> padded to 32)."""
    rng = np.random.default_rng(7)
    k, n, g = 48, 45, 12
    col_keep = rng.random(n) < 0.7
    kp = 24
    d = _tiles(rng, k, n, g, kp, tvw=tvw, dtype=jnp.float32, col_keep=col_keep)
    x = _x(rng, 3, k, jnp.float32)
    kw = {} if tvw else dict(config=BlockConfig(block_k=16))
    out = _run(d, x, tvw=tvw, counts=d["counts"], interpret=True, **kw)
    _assert_close(out, _masked_dense(x, d), jnp.float32)
    assert np.all(np.asarray(out)[:, ~col_keep] == 0)
    # counts larger than Kp are clipped, not read past the tile
    big = jnp.full_like(d["counts"], 10 * kp)
    _assert_close(_run(d, x, tvw=tvw, counts=big, interpret=True, **kw),
                  _masked_dense(x, d), jnp.float32)


def test_mixed_dtypes_promote():
    rng = np.random.default_rng(3)
    d = _tiles(rng, 32, 20, 16, 16, tvw=False, dtype=jnp.bfloat16)
    x = _x(rng, 2, 32, jnp.float32)
    out = _run(d, x, tvw=False, interpret=True)
    assert out.dtype == jnp.float32
    _assert_close(out, _masked_dense(x, d), jnp.float32)


class _TVWDense(nn.Module):
    """A minimal Linen layer holding TVW tile data and calling the kernel (interpret mode)."""

    n_out: int
    tiles: dict

    @nn.compact
    def __call__(self, x):
        t = {name: self.variable("tiles", name, lambda a=a: a).value
             for name, a in self.tiles.items()}
        return tvw_matmul(x, t["values"], t["meta"], t["rows"], t["cols"], n_out=self.n_out,
                          interpret=True)


def test_jitted_flax_module_with_traced_tables():
    rng = np.random.default_rng(5)
    d = _tiles(rng, 40, 30, 16, 16, tvw=True, dtype=jnp.float32)
    tiles = {name: d[name] for name in ("values", "meta", "rows", "cols")}
    layer = _TVWDense(n_out=30, tiles=tiles)
    x = _x(rng, 4, 40, jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    y = jax.jit(layer.apply)(variables, x)  # index tables are traced arguments here
    _assert_close(y, _masked_dense(x, d), jnp.float32)


def test_references_agree_with_dense_expansion():
    rng = np.random.default_rng(11)
    d = _tiles(rng, 24, 40, 16, 16, tvw=False, dtype=jnp.float32)
    w = tiles_to_dense(d["values"], d["rows"], d["cols"], 24, 40)
    np.testing.assert_array_equal(np.asarray(w), d["w"])
    w = tiles_to_dense(d["values"], d["rows"], d["cols"], 24, 40, d["counts"])
    np.testing.assert_array_equal(np.asarray(w), d["w"])


def test_tvw_decode_is_the_codec_inverse():
    """The elementwise TVW decoder equals the codec's nm_decompress of every tile."""
    rng = np.random.default_rng(12)
    d = _tiles(rng, 40, 30, 16, 24, tvw=True, dtype=jnp.float32)
    blocks = tvw_compact_blocks(d["values"], d["meta"])
    vr = d["values"].shape[1]
    for t in range(blocks.shape[0]):
        ref = nm_decompress(d["values"][t], unpack_index(d["meta"][t], vr))
        np.testing.assert_array_equal(np.asarray(blocks[t]), np.asarray(ref))


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
@pytest.mark.parametrize("rows", [8, 20, 36])  # value rows: 4, 10 (padded to 12), 18 (to 20)
def test_codec_encoders_give_the_same_bits_from_numpy_and_jax(rows, dtype):
    """nm_compress / pack_index on NumPy arrays (how formats are built on the host) equal
    the jax.numpy computation bit for bit, and round-trip through the decoders; groups keep
    0, 1 or 2 entries (fewer than n are stored as explicit zeros)."""
    rng = np.random.default_rng(rows)
    dense = rng.standard_normal((rows, 13)).astype(dtype)
    g = rng.random((rows // 4, 4, 13))
    keep = (g >= np.sort(g, axis=1)[:, 2:3]) & (rng.random(g.shape) < 0.8)  # <= 2 of 4
    mask = keep.reshape(rows, 13)
    dense = np.where(mask, dense, np.zeros((), dtype))  # pruned entries are zeros (the input)
    v_np, i_np = nm_compress(dense, mask)
    v_jx, i_jx = nm_compress(jnp.asarray(dense), jnp.asarray(mask))
    assert isinstance(v_np, np.ndarray) and isinstance(i_np, np.ndarray)
    assert v_np.dtype == np.dtype(dtype) and i_np.dtype == np.uint8
    np.testing.assert_array_equal(v_np, np.asarray(v_jx))
    np.testing.assert_array_equal(i_np, np.asarray(i_jx))
    meta = pack_index(i_np)
    assert isinstance(meta, np.ndarray) and meta.shape == (-(-(rows // 2) // 4), 13)
    np.testing.assert_array_equal(meta, np.asarray(pack_index(jnp.asarray(i_np))))
    back = nm_decompress(jnp.asarray(v_np), unpack_index(jnp.asarray(meta), rows // 2))
    np.testing.assert_array_equal(np.asarray(back), dense)


# --------------------------------------------------------------------------- gradients


def _grads(fn, x, values, dy):
    return jax.grad(lambda x, v: jnp.sum(fn(x, v).astype(jnp.float32) * dy), argnums=(0, 1))(
        x, values)


@pytest.mark.parametrize("tvw", [False, True], ids=["tw", "tvw"])
@pytest.mark.parametrize("with_counts", [True, False], ids=["counts", "no_counts"])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_gradients_match_reference(m, with_counts, tvw):
    """jax.grad of the kernel (interpret mode) equals jax.grad of the plain-jnp reference:
    N = 37 (last tile ragged), tile 0 keeping all K rows, tile 1 empty, M in {1, 3, 17}."""
    rng = np.random.default_rng(zlib.crc32(repr((m, with_counts, tvw)).encode()))
    k, n, g, kp = 24, 37, 16, 24
    d = _tiles(rng, k, n, g, kp, tvw=tvw, dtype=jnp.float32, empty=(1,))
    x = _x(rng, m, k, jnp.float32)
    dy = jnp.asarray(rng.standard_normal((m, n)), jnp.float32)
    kw = dict(counts=d["counts"]) if with_counts else {}
    meta = (d["meta"],) if tvw else ()
    kernel = tvw_matmul if tvw else tw_matmul
    reference = tvw_matmul_reference if tvw else tw_matmul_reference

    def run(x, v):
        return kernel(x, v, *meta, d["rows"], d["cols"], n_out=n, interpret=True, **kw)

    def ref(x, v):
        return reference(x, v, *meta, d["rows"], d["cols"], n_out=n, **kw)

    gx, gv = jax.jit(lambda x, v: _grads(run, x, v, dy))(x, d["values"])
    rx, rv = _grads(ref, x, d["values"], dy)
    assert gx.dtype == x.dtype and gv.shape == d["values"].shape
    assert float(jnp.abs(rv).max()) > 0.1
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gv), np.asarray(rv), rtol=1e-5, atol=1e-5)
    # The masked dense gradient of x, whatever the counts.
    np.testing.assert_allclose(np.asarray(gx), np.asarray(dy @ jnp.asarray(d["w"]).T),
                               rtol=1e-5, atol=1e-5)
    if with_counts and not tvw:
        pad = np.arange(kp)[None, :, None] >= np.asarray(d["counts"])[:, None, None]
        assert pad.any() and np.all(np.asarray(gv)[np.broadcast_to(pad, gv.shape)] == 0)
        last_pad_cols = np.asarray(d["cols"])[-1] == n  # the ragged last tile
        assert last_pad_cols.any() and np.all(np.asarray(gv)[-1][:, last_pad_cols] == 0)


def test_gradient_dtypes_follow_the_inputs():
    rng = np.random.default_rng(13)
    d = _tiles(rng, 32, 20, 16, 16, tvw=True, dtype=jnp.bfloat16)
    x = _x(rng, 2, 32, jnp.float32)
    gx, gv = jax.grad(
        lambda x, v: jnp.sum(tvw_matmul(x, v, d["meta"], d["rows"], d["cols"], n_out=20,
                                        counts=d["counts"], interpret=True)),
        argnums=(0, 1))(x, d["values"])
    assert gx.dtype == jnp.float32 and gv.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- validation


def test_validation_errors_name_the_parameter():
    rng = np.random.default_rng(1)
    d = _tiles(rng, 16, 16, 16, 16, tvw=True, dtype=jnp.float32)
    x = _x(rng, 2, 16, jnp.float32)
    v, mt, r, c = d["values"], d["meta"], d["rows"], d["cols"]
    with pytest.raises(KernelShapeError, match="values"):
        tvw_matmul(x, v[:, :4], mt, r, c, n_out=16, interpret=True)
    with pytest.raises(KernelDTypeError, match="meta must be uint8"):
        tvw_matmul(x, v, mt.astype(jnp.int32), r, c, n_out=16, interpret=True)
    with pytest.raises(KernelConfigError, match="block_k"):
        tvw_matmul(x, v, mt, r, c, n_out=16, config=BlockConfig(block_k=64), interpret=True)
    with pytest.raises(KernelShapeError, match="multiple of 8"):
        tvw_matmul(x, v[:, :6], mt, r[:, :12], c, n_out=16, interpret=True)
    with pytest.raises(KernelShapeError, match="x must be 2-D"):
        tw_matmul(x[0], v, r, c, n_out=16)
    with pytest.raises(KernelShapeError, match=r"values must have shape \(T, Kp, G\)"):
        tw_matmul(x, v, r, c, n_out=16)
    with pytest.raises(KernelShapeError, match=r"values must have shape \(T, Kp, G\)"):
        tw_matmul_reference(x, v, r, c, n_out=16)
    w = jnp.zeros((1, 16, 16))
    with pytest.raises(KernelDTypeError, match="x must be float32"):
        tw_matmul(x.astype(jnp.int32), w, r, c, n_out=16)
    with pytest.raises(KernelDTypeError, match="rows must be an integer"):
        tw_matmul(x, w, r.astype(jnp.float32), c, n_out=16)
    with pytest.raises(KernelConfigError, match="n_out"):
        tw_matmul(x, w, r, c, n_out=0)
    with pytest.raises(KernelConfigError, match="block_m"):
        tw_matmul(x, w, r, c, n_out=16, config=BlockConfig(block_m=24))
    with pytest.raises(KernelConfigError, match="num_warps"):
        tw_matmul(x, w, r, c, n_out=16, config=BlockConfig(num_warps=3))
    with pytest.raises(KernelConfigError, match="num_stages"):
        tw_matmul(x, w, r, c, n_out=16, config=BlockConfig(num_stages=0))
    with pytest.raises(KernelConfigError, match="config must be a BlockConfig"):
        tw_matmul(x, w, r, c, n_out=16, config=(16, 16, 4, 2))
    with pytest.raises(KernelShapeError, match="counts"):
        tw_matmul(x, w, r, c, n_out=16, counts=jnp.zeros((2,), jnp.int32))
    # plain ValueError / TypeError subclasses: no tvwjax needed to catch them
    assert issubclass(KernelShapeError, ValueError) and issubclass(KernelDTypeError, TypeError)


@pytest.mark.parametrize("m", [1, 16, 100, 5000])
@pytest.mark.parametrize("kp", [8, 24, 96, 512])
def test_default_block_config(m, kp):
    for tvw in (False, True):
        cfg = (tvw_block_config if tvw else tw_block_config)(m, kp, 128)
        for b in (cfg.block_m, cfg.block_k, cfg.num_warps):
            assert b & (b - 1) == 0
        assert cfg.block_m >= 16 and cfg.block_k >= (128 if tvw else 16)
        if not tvw and kp % 16 == 0:
            assert kp % cfg.block_k == 0  # no padding copy of the weights


# --------------------------------------------------------------------------- cuda lowering


def skip_cuda_lowering_without_gpu() -> None:
    """Skip on jax >= 0.11 without a GPU: from 0.11 the Triton lowering asks the GPU for
    its compute capability, and the Mosaic GPU modules can be read back only with the CUDA
    plugin's bindings. These lowering checks run on jax 0.10 (CI) and on a GPU machine."""
    if jax.__version_info__ >= (0, 11) and not any(
            d.platform == "gpu" for d in jax.devices()):
        pytest.skip("jax >= 0.11 lowers these kernels for cuda only with a GPU present "
                    "(checked on jax 0.10, where it needs none)")


def _triton_ir(fn, *specs) -> list[str]:
    """Export ``fn`` for cuda and return the text of every Triton module it launches.

    The Triton custom call stores its module as MLIR bytecode in the ``ir`` entry of its
    backend config (see jax/_src/pallas/triton/pallas_call_registration.py); it is parsed
    back in a context with the Triton dialect registered.
    """
    skip_cuda_lowering_without_gpu()
    exp = jax.export.export(
        jax.jit(fn),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*specs)
    calls = []
    with mlir.make_ir_context():
        module = ir.Module.parse(exp.mlir_module())

        def walk(op):
            for region in op.regions:
                for block in region.blocks:
                    for inner in block.operations:
                        if inner.name == "stablehlo.custom_call":
                            target = ir.StringAttr(inner.attributes["call_target_name"]).value
                            if target == "__gpu$xla.gpu.triton":
                                calls.append(inner.attributes["mhlo.backend_config"]["ir"])
                        walk(inner)

        walk(module.operation)
        blobs = [ir.StringAttr(a).value_bytes for a in calls]
    texts = []
    with triton_lowering._new_ir_context():
        for blob in blobs:
            texts.append(str(ir.Module.parse(blob)))
    return texts


S = jax.ShapeDtypeStruct
_TT_DTYPE = {jnp.dtype(jnp.float32): "f32", jnp.dtype(jnp.bfloat16): "bf16",
             jnp.dtype(jnp.float16): "f16"}


@pytest.mark.parametrize("with_counts", [False, True], ids=["static_loop", "counts"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_tw_lowers_to_triton_dot(dtype, with_counts):
    m, k, n, g, t, kp = 33, 300, 250, 128, 2, 96
    specs = [S((m, k), dtype), S((t, kp, g), dtype), S((t, kp), jnp.int32), S((t, g), jnp.int32)]
    if with_counts:
        specs.append(S((t,), jnp.int32))
    fn = lambda x, v, r, c, *cnt: tw_matmul(x, v, r, c, n_out=n, counts=cnt[0] if cnt else None)
    [text] = _triton_ir(fn, *specs)
    assert "tt.dot" in text and "scf.for" in text
    tt = _TT_DTYPE[jnp.dtype(dtype)]
    cfg = tw_block_config(m, kp, g)
    # one gathered x^T block (block_k x block_m) and one weight block per step
    assert f"tensor<{cfg.block_k}x{cfg.block_m}x!tt.ptr<{tt}>>" in text
    assert f"tensor<{cfg.block_k}x{g}x!tt.ptr<{tt}>>" in text


@pytest.mark.parametrize("precision", [None, "float32", "tensorfloat32"])
def test_float32_dots_follow_the_jax_matmul_precision(precision):
    """float32 operands follow ``jax.default_matmul_precision`` as XLA's own dots do: the
    default lets the GPU use TF32 (measured on an H200: 3e-4 relative error against the
    float32 reference), ``"float32"`` asks for IEEE float32 products."""
    m, k, n, g, t, kp = 16, 64, 128, 128, 1, 64
    specs = [S((m, k), jnp.float32), S((t, kp, g), jnp.float32), S((t, kp), jnp.int32),
             S((t, g), jnp.int32)]
    with jax.default_matmul_precision(precision):
        [text] = _triton_ir(lambda x, v, r, c: tw_matmul(x, v, r, c, n_out=n), *specs)
    assert "tt.dot" in text
    assert ("inputPrecision = tf32" in text) == (precision != "float32")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_tvw_lowers_to_triton_dot_reading_half_the_values(dtype):
    m, k, n, g, t, kp = 8, 512, 200, 128, 2, 256
    specs = [S((m, k), dtype), S((t, kp // 2, g), dtype), S((t, kp // 8, g), jnp.uint8),
             S((t, kp), jnp.int32), S((t, g), jnp.int32)]
    fn = functools.partial(lambda x, v, mt, r, c: tvw_matmul(x, v, mt, r, c, n_out=n))
    [text] = _triton_ir(fn, *specs)
    cfg = tvw_block_config(m, kp, g)
    sub = cfg.block_k // 8
    tt = _TT_DTYPE[jnp.dtype(dtype)]
    assert text.count("tt.dot") == 8  # 2 halves x 4 positions per K step
    # per step: 4 strided value loads of block_k/8 rows (= block_k/2 values rows: half the
    # compact block) and one metadata byte block; never a full block_k x G weight load
    assert text.count(f"tensor<{sub}x{g}x!tt.ptr<{tt}>>") >= 4
    assert f"tensor<{sub}x{g}x!tt.ptr<i8>>" in text
    assert f"tensor<{cfg.block_k}x{g}x!tt.ptr<{tt}>>" not in text


# --------------------------------------------------------------------------- import boundary


def test_pallas_kernels_imports_only_jax_and_numpy():
    """Every module of ``pallas_kernels`` imports only JAX, NumPy, the standard library and
    itself (never ``tvwjax``), statically and at run time."""
    import ast
    import pathlib
    import subprocess
    import sys

    allowed = {"jax", "numpy", "pallas_kernels", "__future__", *sys.stdlib_module_names}
    pkg = pathlib.Path(__file__).resolve().parents[1] / "pallas_kernels"
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
    code = ("import sys, pallas_kernels, pallas_kernels.tcgen05_metadata; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'tvwjax']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pkg.parent)
