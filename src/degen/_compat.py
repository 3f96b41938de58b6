"""Old import paths, kept for one release: the modules that moved to the layered layout
(docs/architecture.md) still import under their old names, with a
:class:`DeprecationWarning` that names the new one. ``import degen.summary`` gives the
very module ``degen.measurement.summary`` (not a copy: patching one patches the other).

:func:`install` puts a finder at the front of :data:`sys.meta_path` (``degen``'s
``__init__`` calls it); it answers only for the names in :data:`MOVED`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old module -> new module
MOVED = {
    "degen.measure": "degen.measurement.failure",
    "degen.risk": "degen.measurement.risk",
    "degen.stress": "degen.measurement.stress",
    "degen.summary": "degen.measurement.summary",
    "degen.progress": "degen.measurement.progress",
    "degen.detect.runaway_fit": "degen.measurement.runaway_fit",
    "degen.load.store": "degen.store",
    "degen.load.runner": "degen.experiments.load.runner",
    "degen.load.schedule": "degen.experiments.load.schedule",
    "degen.load.extend": "degen.experiments.load.extend",
    "degen.tune.study": "degen.experiments.tune.study",
    "degen.tune.space": "degen.experiments.tune.space",
    "degen.tune.race": "degen.experiments.tune.race",
    "degen.tune.storage": "degen.experiments.tune.storage",
    "degen.tune.summary": "degen.experiments.tune.summary",
    "degen.compare": "degen.experiments.compare",
    "degen.profile": "degen.experiments.profile",
    "degen.report": "degen.reports.tune",
    "degen.report_compare": "degen.reports.compare",
    "degen.report_survival": "degen.reports.survival",
    "degen.doctor": "degen.diagnose.doctor",
    "degen.checkpoint": "degen.diagnose.checkpoint",
    "degen.memory": "degen.diagnose.memory",
    "degen.arch": "degen.diagnose.arch",
    "degen.model_presets": "degen.diagnose.presets",
    "degen.load": "degen.experiments.load",
    "degen.tune": "degen.experiments.tune",
}
#: old names that were packages (their submodules are listed in MOVED too)
#: the new modules' own specs, put back after importlib sets the alias's on them
_SPECS: dict[str, importlib.machinery.ModuleSpec | None] = {}
PACKAGES = frozenset(['degen.load', 'degen.tune'])


def _caller_level() -> int:
    """The stack level of the code that imported the old name (past importlib's and this
    module's frames), so the warning is attributed to it and shown by default filters."""
    f, level = sys._getframe(1), 1
    while f is not None and (f.f_code.co_filename.startswith("<frozen importlib")
                             or f.f_code.co_filename == __file__):
        f, level = f.f_back, level + 1
    return level


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self,
                                              is_package=fullname in PACKAGES)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} is now {new}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=_caller_level())
        module = importlib.import_module(new)
        _SPECS.setdefault(new, module.__spec__)  # per module: imports may run in threads
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = _SPECS[module.__name__]  # importlib set the alias's spec on it


_FINDER = _Alias()


def install() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
