"""The report of examples/minilm_obs.py: merged partial runs, every cell, the recorded load."""

from __future__ import annotations

import json


def _row(ev, cal, pattern, s, selection, cos, sec, load):
    return {"eval": ev, "calib": cal, "pattern": pattern, "sparsity": s,
            "selection": selection, "damping": 0.01, "cosine": cos, "seconds": sec,
            "load": load}


def _run(rows, mags, tmp_path, name):
    res = {"tile": 64, "calibration_sentences": 128, "heldout_sentences": 256,
           "sources": {"pydoc": "P", "sklearn": "S"}, "rows": rows, "magnitude": mags,
           "command": f"run {name}", "total_seconds": 60.0}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(res))
    return str(path)


def test_merged_report_has_every_cell_and_the_load_range(tmp_path):
    from examples import minilm_obs

    a = _run([_row("pydoc", "sklearn", "TVW", 0.75, "score", 0.5784, 100.0, 1.2),
              _row("pydoc", "sklearn", "TVW", 0.75, "obs", 0.6012, 190.0, 2.5)],
             [{"eval": "pydoc", "pattern": "EW", "sparsity": 0.5, "cosine": 0.7247}],
             tmp_path, "a")
    b = _run([_row("pydoc", "pydoc", "TVW", 0.75, "score", 0.7092, 20.0, 0.4)],
             [{"eval": "pydoc", "pattern": "EW", "sparsity": 0.5, "cosine": 0.7247}],
             tmp_path, "b")
    res = minilm_obs.merge([a, b])
    assert len(res["rows"]) == 3 and len(res["magnitude"]) == 1
    md = minilm_obs.markdown(res)
    assert ("| TVW | 75% | pydoc | sklearn (other source) | 128 | 0.01 | uniform | 0.5784 | "
            "0.6012 | +0.0228 | 100 / 190 |") in md
    assert ("| TVW | 75% | pydoc | pydoc (in-domain) | 128 | 0.01 | uniform | 0.7092 | -- | -- | "
            "20 / -- |" in md)
    assert "load average 0.4 to 2.5" in md
    assert "EW 50% magnitude pruning, pydoc 0.7247" in md
    assert "`run a`" in md and "`run b`" in md


def test_rows_of_other_calibration_sizes_and_mixtures_get_their_own_lines(tmp_path):
    from examples import minilm_obs

    big = dict(_row("pydoc", "sklearn+numpy", "TW", 0.5, "obs", 0.7578, 70.0, 1.0),
               calib_sentences=1024)
    mixed = dict(_row("pydoc", "pydoc+numpy", "TW", 0.5, "obs", 0.8, 70.0, 1.0))
    a = _run([_row("pydoc", "sklearn+numpy", "TW", 0.5, "obs", 0.6933, 69.0, 1.0), big, mixed],
             [{"eval": "pydoc", "pattern": "EW", "sparsity": 0.5, "cosine": 0.7247}],
             tmp_path, "a")
    old = json.loads(open(a).read())
    old["calibration_sentences"] = 3000
    old["rows"] = [_row("pydoc", "sklearn+numpy", "TW", 0.5, "obs", 0.7627, 99.0, 1.0)]
    b = tmp_path / "b.json"
    b.write_text(json.dumps(old))
    md = minilm_obs.markdown(minilm_obs.merge([a, str(b)]))
    assert "| sklearn+numpy (other source) | 3000 | 0.01 | uniform | -- | 0.7627 |" in md
    assert "| sklearn+numpy (other source) | 128 | 0.01 | uniform | -- | 0.6933 |" in md
    assert "| sklearn+numpy (other source) | 1024 | 0.01 | uniform | -- | 0.7578 |" in md
    assert "| pydoc+numpy (includes the evaluation's source) | 128 |" in md


def test_planned_rows_get_their_own_lines_with_the_plan_seconds(tmp_path):
    from examples import minilm_obs

    plan = {"allocation": "planned", "plan_seconds": 150.0}
    a = _run([_row("pydoc", "sklearn", "TW", 0.5, "score", 0.7428, 20.0, 1.0),
              dict(_row("pydoc", "sklearn", "TW", 0.5, "score", 0.8099, 21.0, 1.0), **plan),
              dict(_row("pydoc", "sklearn", "TW", 0.5, "obs", 0.8258, 90.0, 1.0), **plan)],
             [{"eval": "pydoc", "pattern": "EW", "sparsity": 0.5, "cosine": 0.7247}],
             tmp_path, "a")
    md = minilm_obs.markdown(minilm_obs.merge([a]))
    assert "| 128 | 0.01 | uniform | 0.7428 | -- | -- | 20 / -- |" in md
    # rows from before anchors: every level measured
    assert ("| 128 | 0.01 | planned (all levels) | 0.8099 | 0.8258 | +0.0159 | 21 / 90 (+ 150) |"
            in md)
    anchored = {"allocation": "planned", "plan_seconds": 40.0, "plan_measured": "anchor 0.625"}
    b = _run([dict(_row("pydoc", "sklearn", "TW", 0.5, "score", 0.8011, 22.0, 1.0),
                   **anchored)], [], tmp_path, "b")
    md = minilm_obs.markdown(minilm_obs.merge([a, b]))
    assert "| planned (all levels) | 0.8099 | 0.8258 |" in md
    assert "| planned (anchor 0.625) | 0.8011 | -- | -- | 22 / -- (+ 40) |" in md
    cold = dict(_row("pydoc", "sklearn", "TW", 0.5, "score", 0.7428, 80.0, 1.0), warmup=False)
    md = minilm_obs.markdown(minilm_obs.merge([a, b, _run([cold], [], tmp_path, "c")]))
    assert "| uniform | 0.7428 | -- | -- | 20 / -- |" in md
    assert "| uniform, cold start | 0.7428 | -- | -- | 80 / -- |" in md
    # score and obs planned in separate runs (cold starts): each cell shows its own plan
    own = dict(_row("pydoc", "sklearn", "TW", 0.5, "obs", 0.8255, 124.0, 1.0), **anchored,
               warmup=False)
    own["plan_seconds"] = 96.0
    first = dict(_row("pydoc", "sklearn", "TW", 0.5, "score", 0.8060, 80.0, 1.0), **anchored,
                 warmup=False)
    md = minilm_obs.markdown(minilm_obs.merge([_run([first], [], tmp_path, "d"),
                                               _run([own], [], tmp_path, "e")]))
    assert ("| planned (anchor 0.625), cold start | 0.8060 | 0.8255 | +0.0195 | "
            "80 (+ 40) / 124 (+ 96) |") in md


def test_plan_anchor_is_the_level_nearest_an_eighth_above_the_target():
    from examples import minilm_obs

    assert minilm_obs.plan_anchor([0.0, 0.25, 0.375, 0.5, 0.5625, 0.625, 0.75], 0.5) == 0.625
    assert minilm_obs.plan_anchor([0.5, 0.625, 0.75, 0.8125, 0.875], 0.75) == 0.875
    assert minilm_obs.plan_anchor([0.5, 0.625, 0.75, 0.8125], 0.75) == 0.8125
    assert minilm_obs.plan_anchor([0.0, 0.5], 0.5) == 0.5


def test_plan_levels_follow_the_target_and_the_pattern():
    import tvwjax
    from examples import minilm_obs

    assert minilm_obs.plan_levels(tvwjax.TW(tile=64), 0.5) == [0.0, 0.25, 0.375, 0.5, 0.5625,
                                                                0.625, 0.75]
    tvw = tvwjax.TVW(tile=64, column_share=0.0)
    assert minilm_obs.plan_levels(tvw, 0.75) == [0.5, 0.625, 0.75, 0.8125, 0.875]
    assert minilm_obs.plan_levels(tvwjax.NM(2, 4), 0.5) == [0.5]


def test_plans_are_never_measured_on_evaluation_or_calibration_sentences():
    from examples import minilm_obs
    from examples.minilm_sources import load

    ev = set(load("pydoc", 256, "heldout"))
    for cal in ("pydoc", "pydoc+sklearn", "sklearn"):
        calib = set(load(cal, 128, "train"))
        got = minilm_obs.measure_sentences("pydoc", cal, 128, 64)
        assert len(got) == 64
        assert not (set(got) & ev) and not (set(got) & calib)
