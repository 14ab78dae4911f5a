"""Tests of the Mosaic GPU kernels (Hopper TW ``wgmma``, Blackwell TVW sparse ``tcgen05``) on
the CPU.

* cross-lowering for ``cuda`` with ``jax.export``: the Mosaic GPU module is read out of the
  exported custom call and the instructions it issues are asserted on;
* the Hopper kernel executed in Mosaic GPU interpret mode against the shared plain-jnp
  reference :func:`pallas_kernels.tw_matmul_reference` (and its gradients);
* the Blackwell kernel cannot run in interpret mode (no ``tcgen05`` / TMEM there): its
  operand conversion is checked against an independent decoder of the ``tcgen05`` sparse
  metadata layout written here from the PTX layout (index arithmetic, no reshapes), and its
  data path around the MMA is run with that decoder standing in for the sparse MMA.

Tile data comes from the Triton kernels' test helpers (the same layout contract).
Shapes: awkward ``M``, kept-row counts that are not multiples of the block, empty tiles, a
ragged last tile.
"""

from __future__ import annotations

import functools
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.interpreters import mlir
from jax._src.lib.mlir import ir
from jax.experimental.mosaic.gpu import core as mgpu_core
from jax.experimental.mosaic.gpu import dialect as mgpu_dialect

from pallas_kernels import (
    KernelConfigError,
    KernelDTypeError,
    tvw_compact_blocks,
    tvw_matmul_blackwell,
    tvw_matmul_reference,
    tw_matmul_hopper,
    tw_matmul_reference,
)
from pallas_kernels.mgpu_common import gather_tile_activations
from pallas_kernels.nm_codec import nm_compress, pack_index, unpack_index
from pallas_kernels.tcgen05_metadata import tcgen05_operands
from pallas_kernels.tvw_matmul_blackwell import blackwell_forward
from tests.test_pallas_kernels import (
    _assert_close,
    _masked_dense,
    _tiles,
    _x,
    skip_cuda_lowering_without_gpu,
)

S = jax.ShapeDtypeStruct
MMA_DTYPES = [jnp.bfloat16, jnp.float16]
_PTX_TYPE = {jnp.dtype(jnp.bfloat16): "bf16", jnp.dtype(jnp.float16): "f16"}


def _mosaic_modules(fn, *specs) -> tuple[str, list[str]]:
    """Export ``fn`` for cuda; return the StableHLO text and the text of every Mosaic GPU
    module it launches (the ``mosaic_gpu_v2`` custom call keeps its module as MLIR bytecode
    in the ``module`` entry of its backend config, see jax/experimental/mosaic/gpu/core.py)."""
    skip_cuda_lowering_without_gpu()
    exp = jax.export.export(jax.jit(fn), platforms=["cuda"])(*specs)
    hlo = exp.mlir_module()
    with mlir.make_ir_context() as ctx:
        blobs = []

        def walk(op):
            for region in op.regions:
                for block in region.blocks:
                    for inner in block.operations:
                        if (inner.name == "stablehlo.custom_call" and ir.StringAttr(
                                inner.attributes["call_target_name"]).value == "mosaic_gpu_v2"):
                            config = inner.attributes["mhlo.backend_config"]
                            blobs.append(ir.StringAttr(config["module"]).value_bytes)
                        walk(inner)

        walk(ir.Module.parse(hlo).operation)
        mgpu_dialect.register_dialect(ctx)
        ctx.allow_unregistered_dialects = True
        texts = [str(mgpu_core._run_serde_pass(ir.Module.parse(b), serialize=False))
                 for b in blobs]
    return hlo, texts


def _custom_call_operands(hlo: str) -> list[str]:
    """The operand tensor types of the (single) Mosaic GPU custom call."""
    line = next(ln for ln in hlo.splitlines() if "@mosaic_gpu_v2" in ln)
    sig = line.rsplit(": (", 1)[1].split(") ->")[0]
    return re.findall(r"tensor<[^>]*>", sig)


# --------------------------------------------------------------------------- Hopper TW


@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("g", [128, 48], ids=["G128", "G48"])
def test_hopper_tw_lowers_to_wgmma_with_tma(dtype, g):
    m, k, n, t, kp = 70, 300, 250, 3, 100  # M, Kp not multiples of the blocks
    specs = [S((m, k), dtype), S((t, kp, g), dtype), S((t, kp), jnp.int32),
             S((t, g), jnp.int32), S((t,), jnp.int32)]
    hlo, [text] = _mosaic_modules(
        lambda x, v, r, c, cnt: tw_matmul_hopper(x, v, r, c, n_out=n, counts=cnt), *specs)
    gp = 64 if g == 48 else g  # tile width padded to a power of two
    ptx = _PTX_TYPE[jnp.dtype(dtype)]
    # block_m 128 (M > 64) = two m64 instructions, block_k 64 = four k16 steps
    mma = re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n{gp}k16\.f32\.{ptx}\.{ptx}", text)
    assert len(mma) == 2 * 4
    assert "wgmma.wait.group" in text
    assert "cp.async.bulk.tensor.shared.cluster.global" in text  # TMA loads
    assert "cp.async.bulk.tensor.global.shared" in text          # TMA store
    assert "scf.while" in text or "scf.for" in text               # the counts-bounded loop
    assert "wgmma.wait.group.sync.aligned 1" in text  # one MMA kept in flight
    # operands: the pre-gathered activations (M_pad, T * Kp_pad) and the compact blocks
    ops = _custom_call_operands(hlo)
    ty = {"bf16": "bf16", "f16": "f16"}[ptx]
    assert ops[:3] == [f"tensor<128x{t * 128}x{ty}>", f"tensor<{t}x128x{gp}x{ty}>",
                       f"tensor<{t}xi32>"]


# (M, K, N, G, Kp, block_k): M = 1 and M = 70 (not multiples of block_m); counts not
# multiples of block_k; N not a multiple of G (ragged last tile); tile 1 empty.
HOPPER_SHAPES = [(1, 40, 37, 16, 24, 16), (70, 72, 50, 16, 40, 16), (5, 96, 130, 64, 72, 32)]


@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", HOPPER_SHAPES, ids=lambda s: "M{}_K{}_N{}_G{}_Kp{}".format(*s))
def test_hopper_tw_interpret_matches_reference(shape, dtype):
    m, k, n, g, kp, block_k = shape
    rng = np.random.default_rng(zlib.crc32(repr((shape, "hopper")).encode()))
    d = _tiles(rng, k, n, g, kp, tvw=False, dtype=dtype, empty=(1,))
    counts = np.asarray(d["counts"])
    assert counts[1] == 0 and np.any(counts % block_k)
    x = _x(rng, m, k, dtype)
    # without counts on the float16 runs: every tile loops over all of Kp (zero padding)
    kw = {} if jnp.dtype(dtype) == jnp.float16 else dict(counts=d["counts"])
    out = tw_matmul_hopper(x, d["values"], d["rows"], d["cols"], n_out=n, block_k=block_k,
                           interpret=True, **kw)
    ref = tw_matmul_reference(x, d["values"], d["rows"], d["cols"], n_out=n, **kw)
    assert out.shape == (m, n) and out.dtype == jnp.dtype(dtype)
    assert float(jnp.abs(ref.astype(jnp.float32)).max()) > 0.1
    _assert_close(out, ref, dtype)
    _assert_close(out, _masked_dense(x, d), dtype)


@pytest.mark.parametrize("stages", [2, 3, 6])
def test_hopper_tw_pipeline_depths_match_reference(stages):
    """The copy ring at every depth: more K steps than slots (Kp 136 at block_k 16: nine
    steps), tiles with fewer steps than slots, an empty tile."""
    rng = np.random.default_rng(40 + stages)
    d = _tiles(rng, 160, 70, 32, 136, tvw=False, dtype=jnp.bfloat16, empty=(1,))
    x = _x(rng, 9, 160, jnp.bfloat16)
    out = tw_matmul_hopper(x, d["values"], d["rows"], d["cols"], n_out=70, counts=d["counts"],
                           block_k=16, stages=stages, interpret=True)
    _assert_close(out, _masked_dense(x, d), jnp.bfloat16)


def test_hopper_tw_padding_values_do_not_leak_with_counts():
    """With counts, padding rows count for nothing even when they hold garbage: the
    pre-gather zeroes their activations (the kernel runs whole blocks over them)."""
    rng = np.random.default_rng(21)
    d = _tiles(rng, 48, 40, 16, 24, tvw=False, dtype=jnp.bfloat16)
    pad = np.arange(24)[None, :, None] >= np.asarray(d["counts"])[:, None, None]
    assert pad.any()
    garbage = jnp.where(jnp.asarray(pad), 100.0, d["values"].astype(jnp.float32))
    x = _x(rng, 3, 48, jnp.bfloat16)
    out = tw_matmul_hopper(x, garbage.astype(jnp.bfloat16), d["rows"], d["cols"], n_out=40,
                           counts=d["counts"], block_k=16, interpret=True)
    _assert_close(out, _masked_dense(x, d), jnp.bfloat16)


def test_hopper_tw_gradients_match_reference():
    rng = np.random.default_rng(22)
    d = _tiles(rng, 24, 37, 16, 24, tvw=False, dtype=jnp.bfloat16, empty=(1,))
    x = _x(rng, 3, 24, jnp.bfloat16)
    dy = jnp.asarray(rng.standard_normal((3, 37)), jnp.float32)

    def loss(fn):
        return lambda x, v: jnp.sum(fn(x, v).astype(jnp.float32) * dy)

    kw = dict(n_out=37, counts=d["counts"])
    gk = jax.grad(loss(lambda x, v: tw_matmul_hopper(x, v, d["rows"], d["cols"], block_k=16,
                                                     interpret=True, **kw)),
                  argnums=(0, 1))(x, d["values"])
    gr = jax.grad(loss(lambda x, v: tw_matmul_reference(x, v, d["rows"], d["cols"], **kw)),
                  argnums=(0, 1))(x, d["values"])
    for a, b in zip(gk, gr, strict=True):
        assert a.dtype == b.dtype and float(jnp.abs(b.astype(jnp.float32)).max()) > 0.1
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=2e-2, atol=2e-2)


def test_hopper_tw_rejects_what_wgmma_cannot_take():
    rng = np.random.default_rng(23)
    d = _tiles(rng, 32, 20, 16, 16, tvw=False, dtype=jnp.float32)
    x = _x(rng, 2, 32, jnp.float32)
    with pytest.raises(KernelDTypeError, match="bfloat16 or float16"):
        tw_matmul_hopper(x, d["values"], d["rows"], d["cols"], n_out=20)
    xb, vb = x.astype(jnp.bfloat16), d["values"].astype(jnp.bfloat16)
    with pytest.raises(KernelConfigError, match="block_m"):
        tw_matmul_hopper(xb, vb, d["rows"], d["cols"], n_out=20, block_m=32)
    with pytest.raises(KernelConfigError, match="block_k"):
        tw_matmul_hopper(xb, vb, d["rows"], d["cols"], n_out=20, block_k=24)
    with pytest.raises(KernelConfigError, match="stages"):
        tw_matmul_hopper(xb, vb, d["rows"], d["cols"], n_out=20, stages=1)
    wide = jnp.zeros((1, 16, 300), jnp.bfloat16)
    with pytest.raises(KernelConfigError, match="<= 256"):
        tw_matmul_hopper(xb, wide, d["rows"][:1], jnp.zeros((1, 300), jnp.int32), n_out=20)


def test_pre_gather_zeroes_padding():
    x = jnp.arange(12.0).reshape(3, 4) + 1
    rows = jnp.array([[2, 0, 0], [3, 1, 0]])
    xg = gather_tile_activations(x, rows, jnp.array([1, 2]), 4, 4, jnp.float32)
    expect = np.zeros((4, 2 * 4), np.float32)  # (M_pad, T * Kp_pad): tile t at [4t, 4t+4)
    expect[:3, 0] = np.asarray(x)[:, 2]
    expect[:3, 4], expect[:3, 5] = np.asarray(x)[:, 3], np.asarray(x)[:, 1]
    np.testing.assert_array_equal(np.asarray(xg), expect)


# --------------------------------------------------------------------------- Blackwell TVW


@pytest.mark.parametrize("dtype", MMA_DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_blackwell_tvw_lowers_to_sparse_tcgen05_reading_half_the_values(dtype):
    m, k, n, g, t, kp = 70, 300, 250, 128, 2, 200  # Kp padded to 256: two K steps
    specs = [S((m, k), dtype), S((t, kp // 2, g), dtype), S((t, kp // 8, g), jnp.uint8),
             S((t, kp), jnp.int32), S((t, g), jnp.int32), S((t,), jnp.int32)]
    hlo, [text] = _mosaic_modules(
        lambda x, v, mt, r, c, cnt: tvw_matmul_blackwell(x, v, mt, r, c, n_out=n, counts=cnt),
        *specs)
    # the sparse MMA (K = 32 per instruction for 16-bit types: 4 per 128-row step)
    sparse = re.findall(r"tcgen05\.mma\.sp\.cta_group::1\.kind::f16", text)
    assert len(sparse) == 4
    assert "nvvm.tcgen05.cp" in text                      # metadata SMEM -> TMEM
    assert "tcgen05.ld" in text and "nvvm.tcgen05.alloc" in text  # accumulator in TMEM
    assert "cp.async.bulk.tensor.shared.cluster.global" in text
    # Operands: activations (M_pad, T * Kp_pad), the 2:4 values of W_t^T with Kp_pad / 2
    # columns (half the compact block) and their uint2 metadata; no dense weight operand.
    ty = _PTX_TYPE[jnp.dtype(dtype)]
    ops = _custom_call_operands(hlo)
    assert ops == [f"tensor<128x{t * 256}x{ty}>", f"tensor<{t}x128x128x{ty}>",
                   f"tensor<{t}x1x2x128x64xui2>", f"tensor<{t}xi32>"]


def _decode_tcgen05(a_values: np.ndarray, a_meta: np.ndarray) -> np.ndarray:
    """Independent decoder of the tcgen05 sparse operand (one tile): dense ``(G_pad, Kp)``.

    Metadata element ``(row, j)`` (``j``: the ``j``-th kept value of the row, two per group
    of four K positions) sits, per the PTX layout of 16-bit sparse metadata that
    ``format_tcgen05_sparse_metadata`` produces, in block ``(row // 128, j // 64)`` at
    row ``16 a + 8 e + c`` and column ``16 d + 8 b + f`` with ``a = row % 128 // 16``,
    ``b = row % 16 // 8``, ``c = row % 8``, ``d = j % 64 // 16``, ``e = j % 16 // 8``,
    ``f = j % 8``.
    """
    g_pad, half = a_values.shape
    dense = np.zeros((g_pad, 2 * half), np.float32)
    for row in range(g_pad):
        a, b, c = row % 128 // 16, row % 16 // 8, row % 8
        for j in range(half):
            d, e, f = j % 64 // 16, j % 16 // 8, j % 8
            pos = int(a_meta[row // 128, j // 64, 16 * a + 8 * e + c, 16 * d + 8 * b + f])
            group = j // 2
            dense[row, 4 * group + pos] += float(a_values[row, j])
    return dense


@pytest.mark.parametrize(("kp", "g"), [(24, 40), (136, 136)], ids=["Kp24_G40", "Kp136_G136"])
def test_tcgen05_operands_match_an_independent_decoder(kp, g):
    """The converted operands decode (independently) to the TVW reference decoder's compact
    blocks, transposed; positions form increasing pairs (the hardware's valid 2:4 codes),
    including groups with one kept value (stored by the codec as a decreasing pair), an
    empty tile and padding (G, Kp not multiples of 128: padded)."""
    rng = np.random.default_rng(kp)
    d = _tiles(rng, 160, 150, g, kp, tvw=True, dtype=jnp.bfloat16, empty=(1,))
    blocks = np.asarray(tvw_compact_blocks(d["values"], d["meta"]), np.float32)
    blocks[0, 0:3, :] = 0.0  # group 0 of tile 0: only position 3 kept
    blocks[0, 3, :] = 1.5
    comp = [nm_compress(jnp.asarray(b), jnp.asarray(b != 0)) for b in blocks]
    values = jnp.stack([v for v, _ in comp]).astype(jnp.bfloat16)
    meta = jnp.stack([pack_index(ix) for _, ix in comp])
    assert int(unpack_index(meta[0], 2)[0, 0]) == 3  # the codec's decreasing pair (3, 0)
    a_values, a_meta = tcgen05_operands(values, meta, jnp.dtype(jnp.bfloat16))
    t = blocks.shape[0]
    assert a_values.shape[1] % 128 == 0 and a_values.shape[2] * 2 % 128 == 0
    assert a_meta.dtype == jnp.uint2
    meta_np = np.asarray(a_meta.astype(jnp.uint8))
    vals = np.asarray(a_values, np.float32)
    for i in range(t):
        dense = _decode_tcgen05(vals[i], meta_np[i])
        np.testing.assert_array_equal(dense[:g, :kp], blocks[i].T)
        assert not dense[g:].any() and not dense[:, kp:].any()
        for row in range(0, dense.shape[0], 7):  # every pair strictly increasing
            pos = [int(meta_np[i, row // 128, j // 64, 16 * (row % 128 // 16)
                               + 8 * (j % 16 // 8) + row % 8,
                               16 * (j % 64 // 16) + 8 * (row % 16 // 8) + j % 8])
                   for j in range(vals.shape[2])]
            assert all(p0 < p1 for p0, p1 in zip(pos[::2], pos[1::2], strict=True))


def _emulated_tcgen05_call(xg, a_values, a_meta, counts, *, block_m):
    """What the Blackwell kernel computes, program by program, with the sparse MMA replaced
    by the independent decoder and a dense product: ``y_t^T`` over
    ``ceil(k_t / 128)`` steps of 128 compact rows. A ``pure_callback`` into NumPy, so that
    it also runs under ``jit`` and inside loops."""
    t, g_pad = a_values.shape[:2]
    out = jax.ShapeDtypeStruct((t * g_pad, xg.shape[0]), a_values.dtype)
    return jax.pure_callback(
        functools.partial(_emulated_tcgen05_numpy, block_m=block_m), out, xg, a_values,
        a_meta.astype(jnp.uint8), counts)


def _emulated_tcgen05_numpy(xg, a_values, a_meta, counts, *, block_m):
    xg = np.asarray(xg, np.float32)
    vals = np.asarray(a_values, np.float32)
    meta = np.asarray(a_meta, np.uint8)
    t, g_pad = vals.shape[:2]
    m_pad, kp_pad = xg.shape[0], xg.shape[1] // t
    xg = xg.reshape(m_pad, t, kp_pad).transpose(1, 0, 2)
    assert m_pad % block_m == 0 and kp_pad % 128 == 0 and g_pad % 128 == 0
    out = np.zeros((t * g_pad, m_pad), np.float32)
    for i in range(t):
        steps = -(-min(max(int(counts[i]), 0), kp_pad) // 128)
        kk = 128 * steps
        dense = _decode_tcgen05(vals[i], meta[i])
        out[i * g_pad:(i + 1) * g_pad] = dense[:, :kk] @ xg[i, :, :kk].T
    return out.astype(a_values.dtype)


@pytest.mark.parametrize("m", [1, 70])
def test_blackwell_data_path_with_an_emulated_mma_matches_reference(m):
    """Everything the Blackwell kernel relies on outside the MMA (operand conversion, the
    pre-gather, counts-bounded steps, the transposed output, the column placement) against
    the shared TVW reference: G = 40 (padded to 128), Kp = 136 (two K steps; counts not
    multiples of 128), an empty tile, a ragged last tile."""
    rng = np.random.default_rng(30 + m)
    d = _tiles(rng, 160, 150, 40, 136, tvw=True, dtype=jnp.bfloat16, empty=(1,))
    x = _x(rng, m, 160, jnp.bfloat16)
    out = blackwell_forward(x, d["values"], d["meta"], d["rows"], d["cols"], d["counts"],
                            n_out=150, block_m=64, kernel_call=_emulated_tcgen05_call)
    ref = tvw_matmul_reference(x, d["values"], d["meta"], d["rows"], d["cols"], n_out=150,
                               counts=d["counts"])
    assert out.shape == (m, 150) and out.dtype == jnp.bfloat16
    assert float(jnp.abs(ref.astype(jnp.float32)).max()) > 0.1
    _assert_close(out, ref, jnp.bfloat16)
    _assert_close(out, _masked_dense(x, d), jnp.bfloat16)


def test_blackwell_tvw_rejects_float32():
    rng = np.random.default_rng(24)
    d = _tiles(rng, 32, 20, 16, 16, tvw=True, dtype=jnp.float32)
    x = _x(rng, 2, 32, jnp.float32)
    with pytest.raises(KernelDTypeError, match="bfloat16 or float16"):
        tvw_matmul_blackwell(x, d["values"], d["meta"], d["rows"], d["cols"], n_out=20)
    with pytest.raises(KernelConfigError, match="block_m"):
        tvw_matmul_blackwell(x.astype(jnp.bfloat16), d["values"].astype(jnp.bfloat16),
                             d["meta"], d["rows"], d["cols"], n_out=20, block_m=96)
