"""One trained model for the rows of a grid that differ only in what acts at inference.

Two rows whose resolved configs are equal but for the axes declared ``stage="inference"``
(``rvosflow.axes``: the solver's steps, shift and timestep rounding, the decoder, the mask rule,
windows, the EMA) train the same model. Such rows form a *group*; for each seed the group's model
is trained once (its training run), and each row's trial scores it with ``mode=validate
ckpt_path=<its checkpoint>`` and the row's inference settings typed (``config.apply_checkpoint``
lets typed inference settings win over the checkpoint's). A row alone in its group trains and
scores in its own trial, as before.

* **Key**: the row's resolved config, less the inference-only axes, the settings their defaults
  follow (``model.vae_decoder`` follows the decoder files), what was typed (``overrides``: the
  same settings can be typed two ways) and where the run is recorded (``logger``); the seed is a
  second part of the key (the worker sets it last, over anything a row says). Everything else --
  data, model, schedule, every non-axis setting -- must be equal. A row that scores an EMA makes
  its group's training keep one (the EMA never changes the trained weights).
* **Record**: a training is a folder of the study's run folder, ``models/<group>-s<seed>-<fingerprint>/``,
  with ``trained.json`` written atomically once the checkpoint is there (``failed.json`` when the
  training raised). It is trained under an exclusive ``flock`` of the folder's ``.lock``, so two
  workers (``--workers 2``, or two drivers on one machine) never train it twice: the second waits,
  then reads ``trained.json``. A killed training leaves no ``trained.json`` (a signal stops it at
  a batch, its MLflow run KILLED; a SIGKILL frees its lock with the process, and the next run's
  ``tracking.reap_dead_runs`` marks its run KILLED), so the next trial that needs it trains it
  again from the start, in a new ``attempt-N`` folder. Drivers on other machines, with their own
  run folders, train their own copy of a model they need.
* **MLflow**: the training is a child run of the sweep's parent run (tags ``rvosflow.role=training``,
  ``rvosflow.training=<fingerprint>``, the rows and seed); each scoring trial's child run names it
  (``rvosflow.trained_by`` = its run id, ``rvosflow.trained_by_url``, ``rvosflow.checkpoint``,
  ``rvosflow.model`` = the group's label).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from rvosflow import atomic, schema, signals
from rvosflow.axes import fields_of
from rvosflow.config import compose
from rvosflow.train import run

ROLE_TAG = "rvosflow.role"              # "training" on a shared training's run
TRAINING_TAG = "rvosflow.training"      # the training's fingerprint, on it and on the runs that score it
TRAINED_BY_TAG = "rvosflow.trained_by"  # on a scoring run: the MLflow run id of the training it scored
MODEL_TAG = "rvosflow.model"            # the group's label (M1, M2 ...), as the table's Model column
BOOKKEEPING = ("overrides", "logger")   # not what trains: how it was typed, where it is recorded
TRAINED, FAILED = "trained.json", "failed.json"


class SharedTrainingFailed(RuntimeError):
    """The training a row would score failed earlier (``failed.json``); ``--retry-failed`` trains it again."""


@dataclass(frozen=True)
class RowTraining:
    """What a grid row trains, apart from its seed, and the settings only its scoring sees."""

    key: str                      # fingerprint of the resolved config less the inference-only settings
    inference: tuple[str, ...]    # overrides typing the row's inference-only settings
    ema: bool                     # the row scores an EMA


@dataclass(frozen=True)
class Group:
    """Rows that train the same model (per seed)."""

    label: str                    # M1, M2 ... in row order
    key: str
    rows: tuple[str, ...]
    overrides: tuple[str, ...]    # what the model trains as: the first row's, with an EMA when any row scores one

    @property
    def shared(self) -> bool:
        return len(self.rows) > 1

    def fingerprint(self, seed: int) -> str:
        return hashlib.sha1(f"{self.key}|seed={seed}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ keys and groups

def inference_only_keys(run) -> list[str]:
    """The keys of the axes that act only at inference (``Axis.stage``), and of the settings their
    defaults interpolate (``model.vae_decoder`` follows ``model.vae_decoder_path`` / ``model.vae_ckpt``)."""
    keys = [a.key for a in schema.axes(run) if a.stage == "inference"]
    defaults = {key: f.default for key, f, _ in fields_of(schema.RunConfig)}
    followed = [k for key in keys if isinstance(defaults.get(key), str)
                for k in re.findall(r"\$\{([\w.]+)\}", defaults[key])]
    return list(dict.fromkeys([*keys, *followed]))


def row_training(run) -> RowTraining | None:
    """A grid row's :class:`RowTraining` from its resolved config; None for a row that does not train."""
    if run.mode != "train":
        return None
    plain = dataclasses.asdict(run)
    inference = inference_only_keys(run)
    pinned = tuple(override(key, _pop(plain, key)) for key in inference)
    for key in (*BOOKKEEPING, "seed"):
        _pop(plain, key)
    key = hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()
    return RowTraining(key=key, inference=pinned, ema=bool(run.ema.enabled))


def groups(spec) -> list[Group]:
    """The spec's rows grouped by what they train (rows composed: ``row.training`` set), in row order."""
    by_key: dict[str, list] = {}
    for row in spec.rows:
        if row.training is not None:
            by_key.setdefault(row.training.key, []).append(row)
    out = []
    for i, (key, rows) in enumerate(by_key.items()):
        first = rows[0]
        ema = ["ema.enabled=true"] if any(r.training.ema for r in rows) and not first.training.ema else []
        out.append(Group(label=f"M{i + 1}", key=key, rows=tuple(r.id for r in rows),
                         overrides=(*spec.overrides, *first.overrides, *ema)))
    return out


def shared_group(spec, row_id: str) -> Group | None:
    """The group ``row_id`` scores a shared model of, or None when it trains its own."""
    return next((g for g in groups(spec) if row_id in g.rows and g.shared), None)


def model_labels(spec) -> dict[str, str]:
    """``{row id: group label}`` when some rows share a model (the table's Model column), else empty."""
    found = groups(spec)
    if not any(g.shared for g in found):
        return {}
    return {r: g.label for g in found for r in g.rows}


def override(key: str, value) -> str:
    """``key=value`` as Hydra reads it back as the same value."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    quoted = str(value).replace("'", "\\'")  # quoted: a string stays a string ("1", "true")
    return f"{key}='{quoted}'"


def _pop(plain: dict, key: str):
    *parents, last = key.split(".")
    node = plain
    for part in parents:
        node = node[part]
    return node.pop(last)


# ------------------------------------------------------------------------------ trainings on disk

def folder(ctx, group: Group, seed: int) -> Path:
    return ctx.runs_root / "models" / f"{group.label}-s{seed}-{group.fingerprint(seed)}"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


@contextlib.contextmanager
def _locked(where: Path, wait: bool = True):
    """An exclusive flock of ``where/.lock`` (freed by the kernel if the process dies); yields
    whether it was taken (``wait=False``: not when another process holds it)."""
    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def trained(ctx, group: Group, seed: int, say=print) -> dict:
    """The record of ``group``'s model at ``seed`` (``trained.json``: its checkpoint and MLflow run),
    trained now if no process has finished it; waits while another process trains it."""
    where = folder(ctx, group, seed)
    done = _read(where / TRAINED)
    if done:
        return done
    with _locked(where):
        return _record_or_train(ctx, group, seed, where, say)


def train_next(ctx, pending: set, say=print) -> bool:
    """Train one shared model that a ``pending`` grid point (row, seed) needs and no process is
    training; False when there is none (each worker trains a different one before scoring)."""
    for group in groups(ctx.spec):
        for seed in ctx.spec.seeds:
            if not group.shared or not any((r, seed) in pending for r in group.rows):
                continue
            where = folder(ctx, group, seed)
            if (where / TRAINED).is_file() or (where / FAILED).is_file():
                continue
            with _locked(where, wait=False) as mine:
                if not mine:
                    continue  # another worker trains it
                try:
                    _record_or_train(ctx, group, seed, where, say)
                except Exception:  # noqa: BLE001  (failed.json says why; the rows that need it fail)
                    pass
                return True
    return False


def _record_or_train(ctx, group: Group, seed: int, where: Path, say) -> dict:
    """Under the lock: the finished record, the earlier failure, or a training now."""
    done = _read(where / TRAINED)
    if done:
        return done
    failed = _read(where / FAILED)
    if failed:
        raise SharedTrainingFailed(f"model {group.label} seed {seed} (rows {', '.join(group.rows)}) failed to train: "
                                   f"{failed['error']} (re-run with --retry-failed to train it again)")
    signals.check()  # a signal that came while waiting for the lock: train nothing
    attempt = where / f"attempt-{len(list(where.glob('attempt-*'))) + 1}"
    name = f"train-{group.label}-s{seed}"
    overrides = [*group.overrides, *ctx.extra, f"seed={seed}", f"logger.run_name={name}",
                 f"logger.tracking_uri={ctx.tracking_uri}", f"logger.experiment_name={ctx.experiment_name}"]
    tags = {"mlflow.parentRunId": ctx.parent_id, ROLE_TAG: "training", TRAINING_TAG: group.fingerprint(seed),
            MODEL_TAG: group.label, "rows": ",".join(group.rows), "seed": str(seed), "profile": ctx.spec.profile,
            "rvosflow.study": ctx.study_name, "rvosflow.sweep_uid": ctx.uid}
    say(f"train model {group.label} seed {seed} once for rows {', '.join(group.rows)} ({attempt.name})")
    t0 = time.monotonic()
    try:
        results = run(compose(overrides), attempt, tags=tags)
        if not results.get("checkpoint"):
            raise RuntimeError(f"the training of model {group.label} seed {seed} wrote no checkpoint")
    except Exception as exc:
        atomic.write_text(where / FAILED, json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000],
                                                      "attempt": attempt.name}))
        say(f"FAILED training of model {group.label} seed {seed}: {type(exc).__name__}: {exc}")
        raise
    record = {"label": group.label, "fingerprint": group.fingerprint(seed), "rows": list(group.rows), "seed": seed, "checkpoint": results["checkpoint"],
              "mlflow_run_id": results["mlflow_run_id"], "mlflow_url": results["mlflow_url"], "JF": results["JF"],
              "seconds": round(time.monotonic() - t0, 1), "run_dir": str(attempt), "overrides": overrides}
    atomic.write_text(where / TRAINED, json.dumps(record, indent=2))
    say(f"trained model {group.label} seed {seed} in {record['seconds']:.0f} s -> {record['checkpoint']}")
    return record


def forget_failures(ctx) -> int:
    """``--retry-failed``: drop the failure records, so that the shared trainings are tried again."""
    paths = list((ctx.runs_root / "models").glob(f"*/{FAILED}"))
    for p in paths:
        p.unlink(missing_ok=True)
    return len(paths)


# ------------------------------------------------------------------------------ scoring

def scoring(row, record: dict) -> tuple[list[str], dict]:
    """The overrides (after the row's) and tags of a row's trial that scores the shared model ``record``."""
    overrides = ["mode=validate", override("ckpt_path", record["checkpoint"]), *row.training.inference]
    tags = {TRAINED_BY_TAG: record["mlflow_run_id"], "rvosflow.trained_by_url": record["mlflow_url"],
            "rvosflow.checkpoint": record["checkpoint"], MODEL_TAG: record["label"], TRAINING_TAG: record["fingerprint"]}
    return overrides, tags
