"""How a setting is declared: its type and default are a dataclass field's, the rest is the field's
metadata, written once with :func:`setting` or :func:`axis`.

* ``setting(default, lo=, hi=, ...)``: a checked value -- its range (``lo``/``hi``, inclusive, or
  exclusive with ``lo_open``/``hi_open``; numbers must also be finite), ``choices`` (a callable
  giving the allowed values, read when checked) and ``rule`` (``(predicate, "what is expected")``).
  ``stage`` says what a checkpoint fixes: ``"train"`` (the checkpoint's value holds; typing
  another is an error), ``"inference"`` (the checkpoint's value unless typed), or None.
* ``axis(default, label=, ...)``: an ablation axis, a setting that also has a table ``label``,
  a run-name ``token``, a ``scope`` (``"all"`` paradigms, or ``"accepted"``: those whose class lists
  it in ``accepts``), the ``off`` value it takes where it does not apply, and whether it is a
  ``column`` of the tables (and an Optuna param).

Everything that validates, names, tags, tabulates or checks checkpoints reads these
declarations (``rvosflow.schema.axes``); nothing else lists the axes.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Token = Callable[[Any], "str | None"]
STAGES = ("train", "inference")
_AS_DEFAULT = object()  # an axis' off value when it declares none: its default


@dataclass(frozen=True)
class Axis:
    """An ablation axis as declared (``key`` is filled in where it is enumerated)."""

    label: str
    token: Token | None = None      # value -> run-name token, None to leave it out
    scope: str = "accepted"         # "all" paradigms, or those whose ``accepts`` names it
    off: Any = _AS_DEFAULT          # the value it takes where it does not apply (default: its default)
    column: bool = False            # a column of the tables and an Optuna trial param
    stage: str = "train"            # "train": acts in training (a checkpoint fixes it) | "inference": only at inference
    key: str = ""
    default: Any = None

    def group(self) -> str:
        """What a paradigm's ``accepts`` names: the axis' config group (``bbs`` for ``bbs.p``), or its key."""
        return self.key.split(".")[0]

    def off_value(self):
        return self.default if self.off is _AS_DEFAULT else self.off


def setting(default=dataclasses.MISSING, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, rule=None,
            stage: str | None = None, factory=None):
    """A checked setting (see the module doc). ``factory`` builds a mutable default (lists, dicts)."""
    meta = {"range": (lo, hi), "open": (lo_open, hi_open), "stage": stage}
    if choices is not None:
        meta["choices"] = choices
    if rule is not None:
        meta["rule"] = rule
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def axis(default, *, label: str, token: Token | None = None, scope: str = "accepted", off=_AS_DEFAULT,
         column: bool = False, stage: str = "train", **check):
    """An ablation axis (see the module doc); ``check`` takes :func:`setting`'s arguments."""
    f = setting(default, stage=stage, **check)
    meta = dict(f.metadata)
    meta["axis"] = Axis(label=label, token=token, scope=scope, off=off, column=column, stage=stage, default=default)
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=meta)


def fields_of(schema, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, type)`` of every leaf setting of a dataclass schema, depth first."""
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += fields_of(tp, f"{key}.")
        else:
            out.append((key, f, tp))
    return out


def axes_of(schema, prefix: str = "") -> list[Axis]:
    """The axes a dataclass schema declares, with their keys, in declaration order."""
    return [dataclasses.replace(f.metadata["axis"], key=key) for key, f, _ in fields_of(schema, prefix)
            if "axis" in f.metadata]


def stages_of(schema, prefix: str = "") -> dict[str, str]:
    """``{key: stage}`` of the settings of a dataclass schema that a checkpoint fixes."""
    return {key: f.metadata["stage"] for key, f, _ in fields_of(schema, prefix) if f.metadata.get("stage")}
