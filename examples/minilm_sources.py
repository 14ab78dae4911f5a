"""Two offline sentence sources for calibration-robustness experiments on MiniLM.

* ``"pydoc"`` -- the project's corpus (:mod:`examples.corpus`): the Python Language Reference
  shipped with CPython in :mod:`pydoc_data.topics` (programming-language prose).
* ``"sklearn"`` -- the docstrings of scikit-learn's public API (every name in ``__all__`` of
  its public subpackages) plus its bundled dataset descriptions
  (``sklearn/datasets/descr/*.rst``): machine-learning and statistics prose, written by
  other authors for another purpose. Nothing is downloaded (scikit-learn is a test
  dependency of the project).

Both go through the same sentence extraction and the same hash split (train / held-out) as
:mod:`examples.corpus`, so ``load(source, n, split)`` is deterministic and the splits of a
source are disjoint. With scikit-learn 1.8 the sklearn source yields about 900 sentences.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path

from examples.corpus import _extract, _sentence_hash, load_sentences
from tvwjax.errors import ConfigError

SOURCES = ("pydoc", "sklearn")
_SKIP = {"tests", "externals", "utils", "experimental"}


@functools.cache
def _sklearn_corpus() -> dict[str, tuple[str, ...]]:
    import sklearn

    sentences: list[str] = []
    seen: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = sorted(m.name for m in pkgutil.iter_modules(sklearn.__path__)
                       if not m.name.startswith("_") and m.name not in _SKIP)
        for name in names:
            try:
                mod = importlib.import_module(f"sklearn.{name}")
            except Exception:  # an optional dependency is missing: skip the subpackage
                continue
            for attr in sorted(getattr(mod, "__all__", ())):
                try:
                    obj = getattr(mod, attr)
                except Exception:  # experimental names raise until enabled
                    continue
                doc = inspect.getdoc(obj)
                if doc and id(obj) not in seen:
                    seen.add(id(obj))
                    sentences.extend(_extract(doc))
    descr = Path(sklearn.__file__).parent / "datasets" / "descr"
    for f in sorted(descr.glob("*.rst")):
        sentences.extend(_extract(f.read_text(encoding="utf-8")))
    unique = sorted(dict.fromkeys(sentences), key=_sentence_hash)
    heldout = tuple(s for s in unique if _sentence_hash(s) % 3 == 0)
    train = tuple(s for s in unique if _sentence_hash(s) % 3 != 0)
    return {"train": train, "heldout": heldout, "all": tuple(unique)}


def load(source: str, n: int | None = None, split: str = "train") -> list[str]:
    """The first ``n`` sentences of a split of ``source`` (``"pydoc"`` or ``"sklearn"``).

    Raises:
      ConfigError: unknown ``source`` or ``split``, or ``n`` larger than the split.
    """
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "pydoc":
        return load_sentences(n, split)
    corpus = _sklearn_corpus()
    if split not in corpus:
        raise ConfigError(f"split must be one of {tuple(corpus)}, got {split!r}")
    pool = corpus[split]
    if n is None:
        return list(pool)
    if n > len(pool):
        raise ConfigError(f"n={n} exceeds the {len(pool)} sentences of {source}/{split}")
    return list(pool[:n])


__all__ = ["SOURCES", "load"]
