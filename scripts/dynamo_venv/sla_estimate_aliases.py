"""Import aliases that let ai-dynamo 1.6.1 run here without its ``aisimulate`` dependency.

ai-dynamo 1.6.1 depends on ``aisimulate==0.13.0``, whose PyPI release is a stub that downloads the
real package from another index (it fails offline). aisimulate is the renamed AI Configurator, so
``aisimulate_core.*`` resolves to ``aiconfigurator_core.*`` (0.12.0) and ``aisimulate.*`` to
``aiconfigurator.*`` (0.12.0; ``legacy_cli`` was ``cli``). Names that only aisimulate 0.13 has (its
native forward-pass perf model) become classes that raise when used, so modules that merely import
them load; the planner paths our tests drive (profile-data regressions, PlannerConfig) never call them.

Installed into the Dynamo test venv by scripts/setup_dynamo_venv.sh, loaded from a ``.pth`` file.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

_PREFIXES = (("aisimulate_core", "aiconfigurator_core"), ("aisimulate", "aiconfigurator"))
_RENAMES = {"aisimulate.legacy_cli": "aiconfigurator.cli"}
_AIS_ONLY = {"aiconfigurator_core.sdk": ("ForwardPassPerfModelConfig",)}


def _target(name: str) -> str | None:
    for old, new in sorted(_RENAMES.items(), key=lambda kv: -len(kv[0])):
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    for old, new in _PREFIXES:
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


def _missing(qualname: str) -> type:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"{qualname} needs aisimulate 0.13 (not installable offline)")

    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__module__": "sla_estimate_aliases"})


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.real_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        for attr in _AIS_ONLY.get(self.target, ()):
            if not hasattr(module, attr):
                setattr(module, attr, _missing(f"{self.target}.{attr}"))
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system stamps the alias spec on the shared module; give the real one back so
        # importlib.resources and relative imports still see the real package.
        module.__spec__ = self.real_spec
        module.__loader__ = self.real_spec.loader


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        real = _target(name)
        if real is None:
            return None
        try:
            importlib.util.find_spec(real)
        except ModuleNotFoundError:
            return None
        return importlib.machinery.ModuleSpec(name, _AliasLoader(real))


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
