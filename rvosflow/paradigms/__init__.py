"""The paradigms of Table 2, one module each: every module of this package is imported here, so a
new paradigm is one module with a ``@register``-ed class plus one ``configs/paradigm/<name>.yaml``."""

import importlib
import pkgutil

from rvosflow.paradigms.base import PARADIGMS, Paradigm, ParadigmOptions, TrainingPair

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def build_paradigm(cfg) -> Paradigm:
    """The paradigm ``cfg.paradigm.name`` of a run config (``config.resolve`` checked the name)."""
    return PARADIGMS[cfg.paradigm.name](cfg)


__all__ = ["PARADIGMS", "Paradigm", "ParadigmOptions", "TrainingPair", "build_paradigm"]
