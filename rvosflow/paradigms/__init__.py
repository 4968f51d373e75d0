"""The four paradigms of Table 2. Adding one: a module here with a ``@register``-ed class and a
``configs/paradigm/<name>.yaml``; nothing else names paradigms."""

from rvosflow.paradigms import noise2mask, onestep_mask, onestep_velocity, video2mask  # noqa: F401
from rvosflow.paradigms.base import PARADIGMS, TOGGLES, FlowSettings, Paradigm, TrainingPair


def build_paradigm(name: str, settings: FlowSettings) -> Paradigm:
    if name not in PARADIGMS:
        raise ValueError(f"paradigm.name: unknown paradigm '{name}'; allowed: {sorted(PARADIGMS)}")
    return PARADIGMS[name](settings)


__all__ = ["PARADIGMS", "TOGGLES", "FlowSettings", "Paradigm", "TrainingPair", "build_paradigm"]
