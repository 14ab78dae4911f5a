"""Determinism: masks identical across runs, jit and eager; ties broken by the documented rule
(descending score, ties to the lower flat index -- :mod:`tvwjax._select`); matmul on the CPU
and Pallas-interpret backends agree.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvwjax
from tvwjax import _select as sel

REPO = Path(__file__).resolve().parents[1]
K, N = 32, 16

PATTERNS = {
    "EW": (tvwjax.EW(), 0.6),
    "BW": (tvwjax.BW(rows=4, cols=4), 0.5),
    "VW": (tvwjax.VW(length=8), 0.5),
    "NM": (tvwjax.NM(), 0.5),
    "TW": (tvwjax.TW(tile=4), 0.6),
    "TEW": (tvwjax.TEW(tile=4, delta=0.05), 0.6),
    "TVW": (tvwjax.TVW(tile=4), 0.75),
}


def _params(seed: int = 0) -> dict:
    """Weights with many exact ties (values on a coarse grid) to stress the tie rule."""
    rng = np.random.default_rng(seed)
    q = lambda shape: jnp.asarray(rng.integers(-4, 5, shape).astype(np.float32) / 4)  # noqa: E731
    return {"a": {"kernel": q((K, N))}, "b": {"kernel": q((N, 8))}}


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def _all_masks(scope: str = "layer") -> dict:
    p = _params()
    return {name: tvwjax.masks(p, pat, s, scope=scope) for name, (pat, s) in PATTERNS.items()
            if not (scope == "global" and name == "NM")}


def test_masks_identical_across_runs_in_process():
    assert _digest(_all_masks()) == _digest(_all_masks())


@pytest.mark.slow
def test_masks_identical_across_processes():
    """A fresh interpreter (new compilation, new process) gives the same bits."""
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")
        import test_determinism as t
        print(t._digest(t._all_masks("global")))
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == _digest(_all_masks("global"))


@pytest.mark.parametrize("name", list(PATTERNS))
def test_masks_jit_traced_and_eager_agree(name):
    pat, s = PATTERNS[name]
    p = _params()
    static = tvwjax.masks(p, pat, s)                          # static sparsity (jit inside)
    traced = jax.jit(lambda q, t: tvwjax.masks(q, pat, t))(p, jnp.float32(s))
    with jax.disable_jit():                                   # genuinely op by op
        eager = pat.mask(jnp.abs(p["a"]["kernel"]), s)
    np.testing.assert_array_equal(np.asarray(static["a"]["kernel"]),
                                  np.asarray(traced["a"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(static["b"]["kernel"]),
                                  np.asarray(traced["b"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(static["a"]["kernel"]), np.asarray(eager))
    tvwjax.check(np.asarray(static["a"]["kernel"]), pat, s)


def test_global_scope_jit_and_static_agree():
    p = _params()
    for name in ("EW", "TW", "TVW"):
        pat, s = PATTERNS[name]
        a = tvwjax.masks(p, pat, s, scope="global")
        b = jax.jit(lambda q, t, pat=pat: tvwjax.masks(q, pat, t, scope="global"))(
            p, jnp.float32(s))
        assert _digest(a) == _digest(b), name


# -- the tie rule: descending score, ties to the lower flat (row-major) index -----------------
def test_tie_rule_topk_prefers_lower_flat_index():
    scores = jnp.asarray([[3.0, 1.0, 3.0], [2.0, 3.0, 1.0]])
    keep = np.asarray(sel.topk_mask(scores, 2))
    # Three 3.0 ties at flat indices 0, 2, 4: the first two win.
    np.testing.assert_array_equal(keep, [[True, False, True], [False, False, False]])
    np.testing.assert_array_equal(np.asarray(sel.rank_desc(jnp.asarray([1.0, 2.0, 1.0, 2.0]))),
                                  [2, 0, 3, 1])


def test_tie_rule_all_equal_scores_every_pattern():
    ones = jnp.ones((8, 8))
    # EW: the first half in row-major order.
    ew = np.asarray(tvwjax.EW().mask(ones, 0.5))
    np.testing.assert_array_equal(ew.reshape(-1), np.arange(64) < 32)
    # NM: the first n rows of every group of m.
    nm = np.asarray(tvwjax.NM().mask(ones, 0.5))
    np.testing.assert_array_equal(nm, np.tile(np.arange(8)[:, None] % 4 < 2, (1, 8)))
    # VW: the first entries of every vector.
    vw = np.asarray(tvwjax.VW(length=4).mask(ones, 0.5))
    np.testing.assert_array_equal(vw, np.tile(np.arange(8)[:, None] % 4 < 2, (1, 8)))
    # TW-1D: row segments are ranked over the (K, tiles) grid row-major, so equal segments
    # are kept row by row across tiles: rows 0..3 in both tiles.
    tw = np.asarray(tvwjax.TW(tile=4).mask(ones, 0.5))
    np.testing.assert_array_equal(tw, np.tile(np.arange(8)[:, None] < 4, (1, 8)))
    # TW-2D: column pruning keeps the lower-index columns.
    tw2 = np.asarray(tvwjax.TW(tile=2, column_share=0.5).mask(ones, 0.75))
    assert tw2[:, :4].any(axis=0).all() and not tw2[:, 4:].any()
    # BW: blocks in row-major block order.
    bw = np.asarray(tvwjax.BW(rows=4, cols=4).mask(ones, 0.5))
    np.testing.assert_array_equal(bw, np.tile(np.arange(8)[:, None] < 4, (1, 8)))


def test_tie_rule_on_a_single_row():
    """Among tied scores the lower indices are kept, whatever the budget."""
    s = jnp.asarray([[1.0, 2.0, 2.0, 2.0, 0.5]])
    keep = np.asarray(tvwjax.EW().mask(s, 0.4))  # keep round(0.6*5) = 3
    np.testing.assert_array_equal(keep, [[False, True, True, True, False]])
    keep = np.asarray(tvwjax.EW().mask(s, 0.6))  # keep 2 of the three 2.0s: the first two
    np.testing.assert_array_equal(keep, [[False, True, True, False, False]])


# -- backends: masks take no backend; matmul CPU vs Pallas interpret ------------------------------
@pytest.mark.parametrize("name", ["TW", "TVW"])
def test_matmul_cpu_and_interpret_agree(name):
    pat = {"TW": tvwjax.TW(tile=8), "TVW": tvwjax.TVW(tile=8)}[name]
    s = 0.5 if name == "TW" else 0.75
    w = jax.random.normal(jax.random.key(0), (K, N))
    mask = pat.mask(jnp.abs(w), s)
    cw = tvwjax.compress(w, mask, pat)
    x = jax.random.normal(jax.random.key(1), (4, K))
    y_cpu = tvwjax.matmul(x, cw, backend="cpu")
    y_int = tvwjax.matmul(x, cw, backend="interpret")
    y_ref = x @ jnp.where(mask, w, 0)
    np.testing.assert_allclose(np.asarray(y_cpu), np.asarray(y_int), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y_cpu), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    # Repeated calls are bit-identical on each backend.
    np.testing.assert_array_equal(np.asarray(y_cpu),
                                  np.asarray(tvwjax.matmul(x, cw, backend="cpu")))
    np.testing.assert_array_equal(np.asarray(y_int),
                                  np.asarray(tvwjax.matmul(x, cw, backend="interpret")))
