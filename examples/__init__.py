"""Examples and applications built on tvwjax (not part of the installed package).

Scripts run from the repository root (``python examples/demo.py``, ``python
examples/digits.py``, ``python examples/minilm_prune.py``); the tests and the notebooks
import them as ``examples.<module>`` with the repository root on ``sys.path``.
"""
