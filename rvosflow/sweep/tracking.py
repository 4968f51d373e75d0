"""The MLflow side of a sweep: one parent run per study (found by its uid tag, so every worker and
every re-run converges on the same one) and a child run per trial, each ending in a state."""

from __future__ import annotations

PARENT_TAG = "rvosflow.sweep"        # on the parent run: the study's uid
STUDY_TAG = "rvosflow.study"         # on parent and child runs: the study name
UID_TAG = "rvosflow.sweep_uid"       # on child runs: the study's uid
ERROR_TAG = "rvosflow.error"         # on a child run that did not finish: why


class Tracking:
    """The MLflow side of a study: the parent run and the bookkeeping of child runs."""

    def __init__(self, uri: str, experiment_name: str):
        self.uri = uri
        self.experiment_name = experiment_name
        self.client = _client(uri)

    def experiment_id(self) -> str:
        from rvosflow.tracking import mark_experiment
        from rvosflow.train import artifact_location

        location = artifact_location(self.uri, self.experiment_name)  # this project's folder
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            exp_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception:  # created meanwhile by another worker
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id
        mark_experiment(self.client, exp_id)
        return exp_id

    def _search(self, filter_string: str, **kw):
        return self.client.search_runs([self.experiment_id()], filter_string=filter_string, max_results=5000, **kw)

    def parent_run(self, study_name: str, uid: str, params: dict, tags: dict | None = None) -> str:
        """The study's parent run, found by its tag (created once; several workers converge on
        the earliest one). It carries MLflow's user, source and git tags like any run, and ``tags``."""
        flt = f"tags.`{PARENT_TAG}` = '{uid}'"
        runs = self._search(flt)
        mine = None
        if not runs:
            from rvosflow.tracking import context_tags

            mine = self.client.create_run(self.experiment_id(), run_name=study_name,
                                          tags=context_tags({PARENT_TAG: uid, STUDY_TAG: study_name, **(tags or {})})).info.run_id
            for k, v in params.items():
                self.client.log_param(mine, k, str(v)[:6000])
            runs = self._search(flt)
        chosen = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        if mine and mine != chosen:
            self.client.delete_run(mine)
        if self.client.get_run(chosen).info.status != "RUNNING":
            self.client.update_run(chosen, status="RUNNING")
        return chosen

    def child_runs(self, parent_id: str, trial_number: int | None = None, status: str | None = None):
        flt = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        if trial_number is not None:
            flt += f" and tags.`optuna.trial` = '{trial_number}'"
        if status:
            flt += f" and attributes.status = '{status}'"
        return self._search(flt)

    def close_trial(self, parent_id: str, trial_number: int, status: str, tags: dict, note: str = "",
                    params: dict | None = None, run_name: str | None = None) -> str:
        """Terminate the trial's child run with ``status``; create one when the trial failed before
        its run existed, so that every trial has a child run."""
        runs = self.child_runs(parent_id, trial_number)
        if runs:
            run_id = runs[0].info.run_id
        else:
            run_id = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags).info.run_id
            for k, v in (params or {}).items():
                self.client.log_param(run_id, k, str(v)[:6000])
        if note:
            self.client.set_tag(run_id, ERROR_TAG, note[:4900])
        self.client.set_terminated(run_id, status)
        return run_id

    def reconcile(self, parent_id: str, study) -> None:
        """Child runs left RUNNING by a dead worker: KILLED once Optuna has failed their trial."""
        from optuna.trial import TrialState

        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for r in self.child_runs(parent_id, status="RUNNING"):
            try:
                number = int(r.data.tags.get("optuna.trial", "-1"))
            except ValueError:
                continue
            if states.get(number, TrialState.RUNNING) != TrialState.RUNNING:
                self.client.set_tag(r.info.run_id, ERROR_TAG, "worker died (heartbeat stale); trial re-queued")
                self.client.set_terminated(r.info.run_id, "KILLED")


def _client(uri: str):
    """An MlflowClient. Its first use creates a SQLite database's tables; two workers doing that
    at once can abort MLflow's migration half-way (a leftover ``_alembic_tmp_experiments`` table
    that no retry gets past), so for SQLite it happens under a lock file beside the database."""
    import fcntl
    from pathlib import Path

    import mlflow

    if not uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return mlflow.MlflowClient(uri)


_TRACKING: dict[tuple, Tracking] = {}


def tracking_for(uri: str, experiment_name: str) -> Tracking:
    """One Tracking (one MLflow client) per tracking URI and experiment in a process."""
    key = (uri, experiment_name)
    if key not in _TRACKING:
        _TRACKING[key] = Tracking(*key)
    return _TRACKING[key]
