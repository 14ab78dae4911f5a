"""An offline English sentence corpus for embedding-fidelity experiments.

Source: the Python Language Reference as shipped with every CPython interpreter in the
standard-library module :mod:`pydoc_data.topics` (the text behind ``help("assert")`` and the
other ``help()`` topics; Python Software Foundation, PSF License). Nothing is downloaded.

Extraction (deterministic): for each topic in sorted key order, paragraphs are split on blank
lines; indented paragraphs (grammar rules, code examples, tables) are dropped; the rest are
joined into lines and split into sentences after ``.``, ``!`` or ``?`` followed by a capital
letter. reST emphasis markers (``*``) are removed. A sentence is kept if it has 6 to 40 words,
starts with a capital letter, ends with a period, contains no grammar or markup characters
(``::=``, brackets, backticks, ``=``, ``|``, ``__``) and is at least 90% letters and spaces.
Duplicates are dropped.

Split: a sentence belongs to the held-out split when the SHA-256 of its UTF-8 text, read as an
integer, is divisible by 3, else to the train split. Within a split the sentences are ordered by
that hash, so every split is a fixed pseudo-random order of varied topics and ``load_sentences(n)``
is a prefix of ``load_sentences(n + 1)``. The assignment of a sentence never depends on the
others, so the split stays stable where the text differs between Python versions.
With CPython 3.11 this yields 784 sentences (521 train, 263 held-out); other versions give
slightly different counts.
"""

from __future__ import annotations

import functools
import hashlib
import re

from tvwjax.errors import ConfigError

SPLITS = ("train", "heldout", "all")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_REJECT = re.compile(r"::=|[{}\[\]<>=|`\\]|__|\.\.\s")
_MIN_WORDS, _MAX_WORDS = 6, 40


def _sentence_hash(sentence: str) -> int:
    return int.from_bytes(hashlib.sha256(sentence.encode("utf-8")).digest(), "big")


def _extract(text: str) -> list[str]:
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.split("\n")
        if any(line.startswith(" ") for line in lines):
            continue  # grammar productions, code samples, tables
        if any(set(line.strip()) <= set("*=-~^") for line in lines):
            continue  # section titles with their underline
        joined = " ".join(line.strip() for line in lines).replace("*", "")
        for sentence in _SENTENCE_END.split(joined):
            sentence = " ".join(sentence.split())
            words = sentence.split()
            if not _MIN_WORDS <= len(words) <= _MAX_WORDS:
                continue
            if not (sentence[0].isupper() and sentence.endswith(".")):
                continue
            if _REJECT.search(sentence) or sentence.count('"') > 4:
                continue
            letters = sum(c.isalpha() or c.isspace() for c in sentence)
            if letters < 0.9 * len(sentence):
                continue
            out.append(sentence)
    return out


def split_sentences(sentences: list[str]) -> dict[str, tuple[str, ...]]:
    """The fixed hash split of a sentence list: distinct sentences in hash order, a third
    ``"heldout"``, the rest ``"train"``, and ``"all"``."""
    unique = sorted(dict.fromkeys(sentences), key=_sentence_hash)
    heldout = tuple(s for s in unique if _sentence_hash(s) % 3 == 0)
    train = tuple(s for s in unique if _sentence_hash(s) % 3 != 0)
    return {"train": train, "heldout": heldout, "all": tuple(unique)}


@functools.cache
def _corpus() -> dict[str, tuple[str, ...]]:
    from pydoc_data.topics import topics

    sentences: list[str] = []
    for key in sorted(topics):
        sentences.extend(_extract(topics[key]))
    return split_sentences(sentences)


def load_sentences(n: int | None = None, split: str = "train") -> list[str]:
    """The first ``n`` sentences of a fixed split of the offline corpus (see module docstring).

    Args:
      n: how many sentences; ``None`` returns the whole split.
      split: ``"train"`` (about 2/3, for calibration and fine-tuning), ``"heldout"`` (about 1/3,
        for reporting; disjoint from train) or ``"all"``.

    Returns:
      A new list of ``n`` distinct English sentences, identical on every call.

    Raises:
      ConfigError: unknown ``split``, ``n`` < 1, or ``n`` larger than the split.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    pool = _corpus()[split]
    if n is None:
        return list(pool)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive int or None, got {n!r}")
    if n > len(pool):
        raise ConfigError(f"n={n} exceeds the {len(pool)} sentences of split {split!r}")
    return list(pool[:n])


__all__ = ["SPLITS", "load_sentences"]
