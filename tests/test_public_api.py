"""Each package's __all__ names exactly its public API, and every name resolves."""

import importlib

import pytest


@pytest.mark.parametrize("name", ["estimator", "validate", "estimator.sources", "estimator.artifacts", "validate.runners"])
def test_all_names_resolve(name):
    mod = importlib.import_module(name)
    for attr in mod.__all__:
        assert hasattr(mod, attr), f"{name}.{attr} in __all__ but missing"


@pytest.mark.parametrize("name", ["estimator", "validate"])
def test_all_is_exactly_the_public_names(name):
    """Every public non-module name of the top-level packages is declared, and nothing else."""
    mod = importlib.import_module(name)
    public = {a for a in vars(mod) if not a.startswith("_") and not isinstance(getattr(mod, a), type(mod))}
    assert public == set(mod.__all__)


def test_importing_does_not_load_heavy_optional_modules():
    import subprocess
    import sys

    code = ("import sys, estimator, validate; heavy = [m for m in ('matplotlib', 'torch', 'kubernetes', "
            "'aiconfigurator_core.sdk', 'transformers') if m in sys.modules]; print(heavy)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
