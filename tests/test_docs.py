"""The ``>>>`` examples in the public docstrings run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import pallas_kernels
import tvwjax


def _modules(pkg) -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."))


MODULES = [m for m in _modules(tvwjax) + _modules(pallas_kernels)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                          verbose=False)
    assert res.failed == 0, f"{name}: {res.failed} of {res.attempted} doctest examples failed"


def test_the_main_public_functions_have_examples():
    main = [tvwjax.masks, tvwjax.prune, tvwjax.fixed_masks, tvwjax.compress, tvwjax.check,
            tvwjax.summary, tvwjax.apply_masks, tvwjax.matmul, tvwjax.Pattern.mask,
            tvwjax.nn.compress_params, tvwjax.one_shot, tvwjax.layer_sensitivity,
            tvwjax.plan_sparsity]
    missing = [f.__qualname__ for f in main if ">>>" not in (f.__doc__ or "")]
    assert not missing, f"public functions without a runnable example: {missing}"


@pytest.mark.slow
def test_readme_api_tour_runs():
    """The README's API tour (its first ``python`` block) runs as written."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    tour = re.search(r"## API tour\n\n```python\n(.*?)```", text, re.S)
    assert tour, "README has no API tour code block"
    exec(compile(tour.group(1), "README.md:API tour", "exec"), {"__name__": "readme_tour"})
