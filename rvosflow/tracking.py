"""What an MLflow run of rvosflow is called and tagged, and where a person finds it.

A run is named for what ran (``video2mask-p0.5-spa-dvi-s0``) and made unique within its
experiment (``...-s0-2`` for the second such run); a sweep names its trials itself (``h-s0``).
Tags say what a reader filters on: paradigm, data tier, whether the score covers the whole
split, and the git commit, user and entry point that MLflow's own ``start_run`` would record.
"""

from __future__ import annotations

from omegaconf import DictConfig

# Where `make mlflow-ui` serves a SQLite store.
LOCAL_UI = "http://127.0.0.1:5000"
# MLflow 3's UI opens an experiment in its GenAI views unless told it is model training.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_experiment(client, experiment_id: str) -> None:
    """Tag the experiment as model training (once), so the UI shows runs, metrics and charts."""
    key, value = EXPERIMENT_KIND
    if key not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, key, value)


def run_name(cfg: DictConfig) -> str:
    """``<paradigm>[-p<bbs>][-spa][-dvi][-nowi]-s<seed>``, prefixed by the mode when not training.
    Only toggles that differ from off are named (WI, on by default, is named when off)."""
    parts = [cfg.paradigm.name]
    if cfg.bbs.p > 0:
        parts.append(f"p{cfg.bbs.p:g}")
    parts += [name for name in ("spa", "dvi") if cfg[name].enabled]
    if not cfg.wi.enabled:
        parts.append("nowi")
    parts.append(f"s{cfg.seed}")
    if cfg.mode != "train":
        parts.insert(0, cfg.mode)
    return "-".join(parts)


def unique_run_name(client, experiment_name: str, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``, ... when the experiment already has runs called so."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return name
    quoted = name.replace("'", "\\'")
    taken = {r.info.run_name for r in client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name LIKE '{quoted}%'", max_results=50000)}
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def partial_eval(cfg: DictConfig) -> str | None:
    """Why the final score does not cover the whole split, or None when it does."""
    if cfg.data.get("eval_videos") is not None:
        return f"data.eval_videos={cfg.data.eval_videos}"
    limit = cfg.trainer.get("limit_val_batches")
    if limit is not None and limit != 1.0:
        return f"trainer.limit_val_batches={limit}"
    return None


def git_commit() -> str | None:
    """The project checkout's commit (with ``-dirty`` when files differ), or None outside git."""
    import subprocess

    from rvosflow.paths import PROJECT_ROOT

    def git(*args):
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def context_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` with MLflow's standard context (user, entry point) and the project's git commit:
    MLflow looks for git beside the entry point, which is not the project under pytest or a launcher."""
    from mlflow.tracking.context.registry import resolve_tags

    commit = git_commit()
    return resolve_tags({**({"mlflow.source.git.commit": commit} if commit else {}), **tags})


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags every run gets: MLflow's standard context (user, source, git commit) and ours."""
    tags = {"paradigm": cfg.paradigm.name, "mode": cfg.mode, "data": str(cfg.data.format),
            "data.tier": str(cfg.data.get("tier") or "real")}
    why = partial_eval(cfg)
    if why:
        tags["partial_eval"] = why
    return context_tags(tags)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: the server's, or `make mlflow-ui`'s for a local store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
