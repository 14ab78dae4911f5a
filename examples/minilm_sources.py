"""Offline sentence sources for calibration-robustness experiments on MiniLM.

* ``"pydoc"`` -- the project's corpus (:mod:`examples.corpus`): the Python Language Reference
  shipped with CPython in :mod:`pydoc_data.topics` (programming-language prose).
* ``"sklearn"`` -- the docstrings of scikit-learn's public API (every name in ``__all__`` of
  its public subpackages) plus its bundled dataset descriptions
  (``sklearn/datasets/descr/*.rst``): machine-learning and statistics prose, written by
  other authors for another purpose.
* ``"numpy"``, ``"scipy"`` -- the docstrings of NumPy's and SciPy's public API (the names
  in ``__all__`` of NumPy and its public subpackages; of SciPy's public subpackages):
  numerical-computing prose.

Nothing is downloaded (the three packages come with the project's test extra).
Every source goes through the same sentence extraction and the same hash split (train /
held-out) as :mod:`examples.corpus`, so ``load(source, n, split)`` is deterministic and the
splits of a source are disjoint. A mixture ``"a+b+..."`` interleaves its sources' splits
round-robin, so any prefix of it is balanced. With scikit-learn 1.8 the sklearn source yields
about 900 sentences.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import pkgutil
import warnings
from pathlib import Path

from examples.corpus import _extract, load_sentences, split_sentences
from tvwjax.errors import ConfigError

SOURCES = ("pydoc", "sklearn", "numpy", "scipy")
_SKIP = {"tests", "externals", "utils", "experimental", "testing", "conftest", "version"}


def _api_docstrings(package: str, top_level: bool) -> list[str]:
    """Sentences of the docstrings of ``package``'s public API: every name in ``__all__`` of
    its public subpackages, and of the package itself with ``top_level`` (each object once)."""
    pkg = importlib.import_module(package)
    sentences: list[str] = []
    seen: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                       if not m.name.startswith("_") and m.name not in _SKIP)
        mods = [pkg] if top_level else []
        for name in names:
            try:
                mods.append(importlib.import_module(f"{package}.{name}"))
            except Exception:  # an optional dependency is missing: skip the subpackage
                continue
        for mod in mods:
            for attr in sorted(getattr(mod, "__all__", ())):
                try:
                    obj = getattr(mod, attr)
                except Exception:  # experimental or deprecated names may raise
                    continue
                doc = inspect.getdoc(obj)
                if doc and id(obj) not in seen:
                    seen.add(id(obj))
                    sentences.extend(_extract(doc))
    return sentences


@functools.cache
def _corpus(source: str) -> dict[str, tuple[str, ...]]:
    sentences = _api_docstrings(source, top_level=source == "numpy")
    if source == "sklearn":
        import sklearn

        descr = Path(sklearn.__file__).parent / "datasets" / "descr"
        for f in sorted(descr.glob("*.rst")):
            sentences.extend(_extract(f.read_text(encoding="utf-8")))
    return split_sentences(sentences)


def _pool(source: str, split: str) -> tuple[str, ...]:
    if source == "pydoc":
        return tuple(load_sentences(None, split))
    corpus = _corpus(source)
    if split not in corpus:
        raise ConfigError(f"split must be one of {tuple(corpus)}, got {split!r}")
    return corpus[split]


def load(source: str, n: int | None = None, split: str = "train") -> list[str]:
    """The first ``n`` sentences of a split of ``source``: one of :data:`SOURCES`, or a
    mixture ``"a+b+..."`` of them whose splits are interleaved round-robin (sentences already
    taken from an earlier source are not repeated).

    Raises:
      ConfigError: unknown ``source`` or ``split``, or ``n`` larger than the split.
    """
    parts = source.split("+")
    for part in parts:
        if part not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES} or a mixture 'a+b' of them, "
                              f"got {source!r}")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"source {source!r} names a source twice")
    if len(parts) == 1 and parts[0] == "pydoc":
        return load_sentences(n, split)
    pools = [_pool(part, split) for part in parts]
    pool = list(dict.fromkeys(s for group in itertools.zip_longest(*pools) for s in group
                              if s is not None))
    if n is None:
        return pool
    if n > len(pool):
        raise ConfigError(f"n={n} exceeds the {len(pool)} sentences of {source}/{split}")
    return pool[:n]


__all__ = ["SOURCES", "load"]
