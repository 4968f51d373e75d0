"""Sweeps on Optuna: the tables of the paper as grids (row x seed), and searches (TPE + pruning).

    python -m rvosflow.sweep sweeps/table2.yaml --profile default [--workers N] [--storage URL]
    python -m rvosflow.sweep sweeps/bbs_p.yaml --profile smoke --workers 2
    python -m rvosflow.sweep sweeps/table2.yaml --table-only          # print/write the table so far

A sweep file (``sweeps/*.yaml``) names its rows (grids) or parameters (searches) as Hydra override
strings for :func:`rvosflow.config.compose`, and *profiles* (run length, data, model, seeds).
One Optuna study per file + profile (``<name>-<profile>``) lives in an RDB storage (SQLite
``<project>/sweeps.db`` by default; any SQLAlchemy URL, e.g. ``postgresql://...``, so that the same
command on many machines shares one study). Each trial is one :func:`rvosflow.train.run`, logged as
an MLflow child run of the study's parent run, which holds the results table and plot.

The package, one module per concept: :mod:`.spec` (the sweep file and its schema), :mod:`.study`
(Optuna storage, samplers, pruners, retries), :mod:`.strategy` (grid vs search), :mod:`.tracking`
(MLflow parent and child runs, in ``rvosflow.tracking``), :mod:`.reuse` (grid rows that share a
trained model), :mod:`.timing` (the scoring's seconds per video),
:mod:`.worker` (the trial loop), :mod:`.report` (the table) and :mod:`.cli` (``python -m rvosflow.sweep``).

Guarantees:

* **no duplicates** -- grid trials are assigned by Optuna's GridSampler (the first N trials take
  grid ids 0..N-1 by trial number); any other trial whose (row, seed) already has a COMPLETE
  trial, or a RUNNING trial with a lower number, is skipped (state PRUNED, user attr
  ``duplicate_of``) before it trains;
* **resume** -- re-running the same command loads the study (``load_if_exists``): completed trials
  are kept; trials whose worker died stop sending heartbeats and, after ``grace_period`` seconds,
  are marked FAIL and re-queued (RetryHeartbeatStaleTrialCallback, ``max_retry`` times); a worker
  with nothing left to start waits for running trials so it can pick such retries up;
* **one model per training configuration** -- grid rows that differ only in axes acting at
  inference (``Axis.stage``) train one model per seed; each row's trial scores its checkpoint
  (``mode=validate``). A finished training is never trained again (``trained.json``), a killed
  one is trained again, a scored row is never scored again (:mod:`.reuse`);
* **stopping** -- SIGTERM / SIGINT (``rvosflow.signals``) stop the running trial or shared
  training at its next batch; it is marked KILLED and queued again (a training: trained again),
  a finished trial is recorded whole, and the sweep exits 143 / 130 with the command that resumes
  it as its last line;
* **failures** -- a trial that raises (a NaN loss raises FloatingPointError in training_step) is
  FAIL in Optuna and FAILED in MLflow and the study goes on (``--retry-failed`` re-queues them);
  the command then exits 1 and the table marks the failed rows.
"""

from rvosflow.sweep.cli import main
from rvosflow.sweep.spec import Row, Spec, load_spec, read_sweep_file
from rvosflow.sweep.strategy import compose_rows, strategy_for

__all__ = ["main", "Row", "Spec", "load_spec", "read_sweep_file", "compose_rows", "strategy_for"]
