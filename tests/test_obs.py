"""Second-order (OBS) mask selection: exact patterns, never worse than activation scores
after the same refit, the brute-force optimum on tiny layers, one_shot(selection="obs")."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

import tvwjax
from tvwjax import calibration as cal
from tvwjax.calibration import layer_stats
from tvwjax.data_aware import wanda
from tvwjax.errors import ConfigError, ShapeError
from tvwjax.obs import damped_hessian, obs_mask, obs_masks, tile_row_scores
from tvwjax.reconstruction import layer_error, one_shot, reconstruct_layer


def _problem(k=48, n=32, m=300, seed=0):
    """Inputs with outlier and correlated features, as in pretrained transformers."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 2.0, k)
    scale[:3] *= 10.0
    x = rng.standard_normal((m, k)) * scale
    x[:, 8:14] = 0.8 * x[:, :6] + 0.2 * x[:, 8:14]
    w = rng.standard_normal((k, n))
    return x.astype(np.float32), w.astype(np.float32)


def _refit_error(w, mask, g):
    return float(layer_error(w, reconstruct_layer(w, np.asarray(mask), g), g))


PATTERNS = [(tvwjax.TW(tile=8), 0.5), (tvwjax.TW(tile=8), 0.75), (tvwjax.TW(tile=16), 0.6),
            (tvwjax.TVW(tile=8), 0.75), (tvwjax.TVW(tile=8), 0.5), (tvwjax.NM(2, 4), 0.5),
            (tvwjax.EW(), 0.5)]


@pytest.mark.parametrize("pattern,s", PATTERNS, ids=lambda v: getattr(v, "name", str(v)))
def test_masks_follow_the_pattern(pattern, s):
    x, w = _problem(k=40, n=28)
    m = np.asarray(obs_mask(w, x.T @ x, pattern, s))
    assert m.shape == w.shape and m.dtype == bool
    tvwjax.check(m, pattern, s)


@pytest.mark.parametrize("pattern,s", [(tvwjax.TW(tile=8), 0.5), (tvwjax.TW(tile=8), 0.75),
                                       (tvwjax.TW(tile=16), 0.6), (tvwjax.TVW(tile=8), 0.75),
                                       (tvwjax.NM(2, 4), 0.5)],
                         ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_worse_than_activation_scores_after_the_same_refit(pattern, s, seed):
    x, w = _problem(seed=seed)
    g = x.T @ x
    act = np.asarray(pattern.mask(wanda(jnp.asarray(w), layer_stats(x)), s))
    obs = np.asarray(obs_mask(w, g, pattern, s))
    assert _refit_error(w, obs, g) <= _refit_error(w, act, g) * (1 + 1e-4)


def test_ew_is_sparsegpt_or_the_activation_mask():
    """EW: SparseGPT's mask or the activation-score mask, whichever has the lower error after
    the OBS sweep; after the exact refit it stays within 10% of the activation mask here."""
    x, w = _problem()
    g = x.T @ x
    act = np.asarray(tvwjax.EW().mask(wanda(jnp.asarray(w), layer_stats(x)), 0.5))
    obs = np.asarray(obs_mask(w, g, tvwjax.EW(), 0.5))
    tvwjax.check(obs, tvwjax.EW(), 0.5)
    assert _refit_error(w, obs, g) <= 1.1 * _refit_error(w, act, g)


def _subset_error(w, h, rows):
    """min over W' supported on ``rows`` of tr((W - W')^T H (W - W')), in float64."""
    rows = list(rows)
    full = np.zeros_like(w)
    full[rows] = np.linalg.solve(h[np.ix_(rows, rows)], (h @ w)[rows])
    d = w - full
    return float(np.sum(d * (h @ d)))


@pytest.mark.parametrize("seed", range(12))
def test_reaches_the_brute_force_optimum_on_tiny_tiles(seed):
    """One tile of 4 columns, 8 rows, keeping 4 or 2 rows: the selected row set has the
    least damped output error of all C(8, c) subsets."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((30, 8)) * rng.uniform(0.2, 3.0, 8)
    x[:, 4:6] = 0.8 * x[:, :2] + 0.2 * x[:, 4:6]
    w = rng.standard_normal((8, 4))
    g = (x.T @ x).astype(np.float32)
    h = np.asarray(damped_hessian(g, 0.01)[0], np.float64)
    for s in (0.5, 0.75):
        m = np.asarray(obs_mask(w.astype(np.float32), g, tvwjax.TW(tile=4), s))
        rows = np.flatnonzero(m[:, 0])
        best = min(_subset_error(w, h, c) for c in itertools.combinations(range(8), len(rows)))
        assert _subset_error(w, h, rows) <= best * (1 + 1e-4)


def test_exchanges_fix_what_the_greedy_path_misses():
    """Seed 8 of the tiny cases: the greedy removal path alone keeps a suboptimal row set;
    the exchange rounds reach the optimum."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((30, 8)) * rng.uniform(0.2, 3.0, 8)
    x[:, 4:6] = 0.8 * x[:, :2] + 0.2 * x[:, 4:6]
    w = rng.standard_normal((8, 4)).astype(np.float32)
    g = (x.T @ x).astype(np.float32)
    h = np.asarray(damped_hessian(g, 0.01)[0], np.float64)
    errs = {}
    for ex in (0, 32):
        m = np.asarray(obs_mask(w, g, tvwjax.TW(tile=4), 0.5, exchanges=ex))
        errs[ex] = _subset_error(w.astype(np.float64), h, np.flatnonzero(m[:, 0]))
    best = min(_subset_error(w.astype(np.float64), h, c)
               for c in itertools.combinations(range(8), 4))
    assert errs[0] > best * 1.001 and errs[32] <= best * (1 + 1e-4)


def test_tile_row_scores_order_is_a_removal_path():
    """Within a tile the scores are non-decreasing along the greedy path, and the first row
    removed is the one of least group-OBS saliency ||w_r||^2 / [H^-1]_rr."""
    x, w = _problem(k=16, n=8)
    h, _ = damped_hessian(x.T @ x, 0.01)
    sc = np.asarray(tile_row_scores(w, h, tile=8, min_rows=1))
    assert sc.shape == (16, 1)
    hinv = np.linalg.inv(np.asarray(h, np.float64))
    sal = (w.astype(np.float64) ** 2).sum(1) / np.diag(hinv)
    assert int(np.argmin(sc[:, 0])) == int(np.argmin(sal))
    assert np.sum(sc[:, 0] == np.finfo(np.float32).max) == 1  # min_rows=1 kept to the end


def test_obs_masks_tree_global_scope_and_bounds():
    x, w = _problem(k=32, n=32)
    x2, w2 = _problem(k=32, n=16, seed=3)
    params = {"a": {"kernel": jnp.asarray(w)}, "b": {"kernel": jnp.asarray(w2 * 0.01)}}
    stats = {"a/kernel": layer_stats(x), "b/kernel": layer_stats(x2)}
    pat = tvwjax.TW(tile=8)
    m = obs_masks(params, stats, pat, 0.5)
    for k in ("a", "b"):
        tvwjax.check(np.asarray(m[k]["kernel"]), pat, 0.5)
    mg = obs_masks(params, stats, pat, 0.5, scope="global", layer_bounds=(0.3, 0.8))
    kept = sum(int(np.asarray(v["kernel"]).sum()) for v in mg.values())
    total = w.size + w2.size
    assert abs(1 - kept / total - 0.5) < 0.05
    for v in mg.values():
        s = 1 - float(np.asarray(v["kernel"]).mean())
        assert 0.3 - 0.05 <= s <= 0.8 + 0.05
        tvwjax.check(np.asarray(v["kernel"]), pat, None)


def test_errors_name_the_parameter():
    x, w = _problem(k=16, n=8)
    g = x.T @ x
    with pytest.raises(ConfigError, match="BW"):
        obs_mask(w, g, tvwjax.BW(4, 4), 0.5)
    with pytest.raises(ConfigError, match="column_share"):
        obs_mask(w, g, tvwjax.TW(tile=4, column_share=0.5), 0.5)
    with pytest.raises(ShapeError, match="gram"):
        obs_mask(w, g[:8, :8], tvwjax.TW(tile=4), 0.5)
    with pytest.raises(ConfigError, match="damping"):
        obs_mask(w, g, tvwjax.TW(tile=4), 0.5, damping=-1.0)
    with pytest.raises(ConfigError, match="sparsity"):
        obs_mask(w, g, tvwjax.TW(tile=4), 1.5)
    with pytest.raises(ConfigError, match="no Gram matrix"):
        obs_masks({"a": {"kernel": jnp.asarray(w)}}, {}, tvwjax.TW(tile=4), 0.5)


def test_one_shot_selection_obs():
    import flax.linen as nn
    import jax

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(8, name="out")(nn.gelu(nn.Dense(16, name="a")(x)))

    rng = np.random.default_rng(0)
    xs = [(rng.standard_normal((32, 16)) * np.linspace(0.1, 5, 16)).astype(np.float32)
          for _ in range(3)]
    model = Net()
    v = model.init(jax.random.key(0), xs[0])
    fn = cal.linen_inputs(model)
    pat = tvwjax.TW(tile=4)
    new, mk, report = one_shot(fn, v, pat, 0.5, [(x,) for x in xs], selection="obs")
    tvwjax.check_tree(mk, pat, 0.5)
    assert all(r["reconstructed"] <= r["masked"] * (1 + 1e-5) for r in report.values())
    with pytest.raises(ConfigError, match="selection"):
        one_shot(fn, v, pat, 0.5, [(x,) for x in xs], selection="hessian")
    with pytest.raises(ConfigError, match="score"):
        one_shot(fn, v, pat, 0.5, [(x,) for x in xs], selection="obs", score="magnitude")


_TVW_REPEATS = """
import os, sys
if sys.argv[1:]:  # pin to two CPUs before JAX sizes its thread pool
    os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(",")])
import numpy as np, jax, tvwjax
from tvwjax.obs import obs_mask
rng = np.random.default_rng(0)
x = rng.standard_normal((1024, 384)).astype(np.float32)
w = rng.standard_normal((384, 384)).astype(np.float32)
g = x.T @ x
for _ in range(40):
    jax.block_until_ready(obs_mask(w, g, tvwjax.TVW(tile=64), 0.75, exchanges=0))
print("done")
"""


@pytest.mark.slow
def test_tvw_selection_does_not_deadlock_a_two_thread_pool():
    """TVW's N:M stage runs batched LAPACK calls for all tiles of a chunk. On jaxlib 0.10,
    two such calls that XLA:CPU runs at the same time each block a worker of the intra-op
    pool waiting for batch tasks queued on that pool: with two threads the process hangs
    (it did within a few calls of this loop, in about 1 of 10 calls). Run on two CPUs, so
    that the pool has two threads whatever the machine."""
    import os
    import subprocess
    import sys

    cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
    env = dict(os.environ, TVWJAX_CPU_KERNEL="0")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _TVW_REPEATS, *([",".join(map(str, cpus))] if cpus else [])],
            capture_output=True, text=True, env=env, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("obs_mask(TVW) hung: batched LAPACK calls ran concurrently")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("done")


@pytest.mark.parametrize("seed", [0, 2])  # both have tiles where each candidate wins
def test_tvw_keeps_per_tile_the_row_set_with_the_lower_error(seed, monkeypatch):
    """TVW's rows, per tile: the removal path's rows or as many rows by activation score,
    whichever has the lower error after the N:M sweep (equal counts: exact sparsity); the
    activation score's own TW mask wins only for the whole layer."""
    from tvwjax import obs as obs_mod

    calls = []
    real = obs_mod._tiles_nm

    def spy(hs, wts, keeps, *args):
        out = real(hs, wts, keeps, *args)
        calls.append((np.asarray(keeps), np.asarray(out[0]), np.asarray(out[1])))
        return out

    monkeypatch.setattr(obs_mod, "_tiles_nm", spy)
    x, w = _problem(k=48, n=40, seed=seed)
    pattern = tvwjax.TVW(tile=8)
    m = np.asarray(obs_mask(w, x.T @ x, pattern, 0.75))
    tvwjax.check(m, pattern, 0.75)
    (k_path, m_path, e_path), (k_match, m_match, e_match), (_, m_alt, e_alt) = calls
    np.testing.assert_array_equal(k_path.sum(1), k_match.sum(1))
    assert (k_path != k_match).any()  # the two candidates differ somewhere
    pick = np.where((e_match < e_path)[:, None, None], m_match, m_path)
    tiles = m.reshape(48, 5, 8).transpose(1, 0, 2)
    if e_alt.sum() < np.minimum(e_path, e_match).sum():
        np.testing.assert_array_equal(tiles, m_alt)
    else:
        np.testing.assert_array_equal(tiles, pick)
