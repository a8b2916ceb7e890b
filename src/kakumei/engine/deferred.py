"""Stand-ins for modules that diffusers imports at the top and a run rarely uses.

A `kakumei generate` on a CPU spends seconds importing before it loads a weight, and some of
it is modules the run never calls: scipy's statistics (for two schedules), and every model
diffusers has, because its `models.transformers`, `models.unets`, `models.autoencoders` and
`models.controlnets` packages import all their modules to export their names. Each stand-in
takes the module's place in `sys.modules` until something uses it, then the real module
loads and answers, so nothing behaves differently; only what nobody asks for is never
imported (tests/engine/test_imports.py).

torch._dynamo (about a second of CPU, pulled in by diffusers' and transformers' import-time
decorators) is not deferred: transformers wraps functions with `torch.compiler.disable` as it
imports, which needs the real module, and a stand-in would have to copy torch's internals.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

_LOCK = threading.RLock()


class DeferredModule(types.ModuleType):
    """Stands in sys.modules for a module until an attribute it lacks is read; then imports
    the real module in its place and answers from it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__path__":
            # what inspect and the import system ask of every module in sys.modules
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


class DeferredPackage(types.ModuleType):
    """A package whose `__init__` imports every submodule. It stands in with the package's
    real path, so that `from package.sub import X` imports that one submodule, and runs the
    real `__init__` in itself the first time a name is asked for that the submodules
    imported so far have not set."""

    _kakumei_spec: importlib.machinery.ModuleSpec | None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_kakumei_spec":
            raise AttributeError(name)
        with _LOCK:
            spec = self.__dict__.pop("_kakumei_spec", None)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(self)
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


# Imported at the top of diffusers' scheduler modules, all of which a scheduler's from_config
# imports (its "compatibles"), for the beta sigma schedule and LMS's coefficients alone.
_SCIPY = ("scipy.stats", "scipy.integrate")
_DIFFUSERS_PACKAGES = ("models.transformers", "models.unets", "models.autoencoders", "models.controlnets")


def defer_scipy() -> None:
    """Make diffusers' `import scipy.stats` and `from scipy import integrate` cheap until
    something uses them (half a second of CPU otherwise: scipy.sparse, scipy.linalg,
    scipy.special and more). The stand-in imports the real module on the first use
    (`scipy.stats.beta`, `integrate.quad`), so "Beta" and LMS compute as before."""
    if importlib.util.find_spec("scipy") is None:
        return
    for name in _SCIPY:
        if name not in sys.modules:
            sys.modules[name] = DeferredModule(name)


def defer_diffusers_imports() -> None:
    """Before diffusers is first imported: stand-ins for its model packages. Does nothing
    once diffusers is imported (its packages are real by then)."""
    with _LOCK:
        if "diffusers" in sys.modules:
            return
        spec = importlib.util.find_spec("diffusers")
        if spec is None or spec.origin is None:
            return
        root = Path(spec.origin).parent
        for sub in _DIFFUSERS_PACKAGES:
            init = root.joinpath(*sub.split(".")) / "__init__.py"
            name = f"diffusers.{sub}"
            if not init.is_file() or name in sys.modules:
                continue
            package_spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
            if package_spec is None:
                continue
            module = importlib.util.module_from_spec(package_spec)
            module.__class__ = DeferredPackage
            module._kakumei_spec = package_spec
            sys.modules[name] = module
