"""The sweep's table: trials as records, the strategy's table written to
``results/<name>[-<profile>].{md,csv,tex,png}``, logged onto the study's MLflow parent run and
printed; failed rows are marked (a grid's ``Seeds`` column, a search's ``State``). The parent run
reads like the paper's table: its description is the table, ρ and the figure; its ``table.json``
holds the CSV's numbers. A smoke table (the smoke profile, or trials scored on part of the
split) says that its numbers mean nothing, in the Markdown, the figure and the description."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from rvosflow import atomic, tables
from rvosflow.metrics.records import read_records
from rvosflow.sweep.study import counts
from rvosflow.tracking import NOTE_LIMIT, NOTE_TAG

TABLE_ARTIFACT = "table.json"  # the parent run's MLflow table (mlflow's log_table)
SMOKE_PROFILE = "smoke"  # the sweep files' profile that checks the pipeline in minutes


def trial_records(study, strategy) -> list[dict]:
    """Optuna trials as plain records for :mod:`rvosflow.tables`."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if not strategy.is_record(t):
            continue
        out.append({"number": t.number, "state": t.state.name, "row": t.params.get("row", "search"),
                    "seed": t.params.get("seed", t.user_attrs.get("seed")), "params": dict(t.params),
                    "JF": t.user_attrs.get("JF") if t.state.name == "COMPLETE" else None,  # t.value is `metric:`
                    "J": t.user_attrs.get("J"), "F": t.user_attrs.get("F"), "TC": t.user_attrs.get("TC"),
                    "infer_s": t.user_attrs.get("infer_s"), "expressions": per_expression(t),
                    **{f"JF/{kind}": v["JF"] for kind, v in (t.user_attrs.get("per_kind") or {}).items()},
                    "duplicate_of": t.user_attrs.get("duplicate_of"), "error": t.user_attrs.get("error")})
    return out


def per_expression(trial) -> list | None:
    """A completed trial's per-expression records (its run's sidecar CSV), None when the file is
    not on this machine (a worker elsewhere wrote it) or the trial has none: its row then has no CI."""
    path = trial.user_attrs.get("per_expression")
    if trial.state.name != "COMPLETE" or not path or not Path(path).is_file():
        return None
    return read_records(path)


def log_table(client, run_id: str, table) -> None:
    """The table as the parent run's MLflow table (``table.json``), replaced on every report:
    ``log_table`` appends to an existing one, so later reports overwrite the file it wrote."""
    if TABLE_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}:
        client.log_table(run_id, table, TABLE_ARTIFACT)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TABLE_ARTIFACT
        table.to_json(path, orient="split", index=False)  # log_table's own format
        client.log_artifact(run_id, str(path))


def meaningless(ctx) -> str | None:
    """Why the table's numbers mean nothing (the smoke profile; child runs scored on part of the
    split, their ``partial_eval`` tag), or None."""
    why = [f"profile {SMOKE_PROFILE}: a few training steps"] if ctx.spec.profile == SMOKE_PROFILE else []
    partial = sorted({r.data.tags["partial_eval"] for r in ctx.tracking.child_runs(ctx.parent_id)
                      if "partial_eval" in r.data.tags})
    if partial:
        why.append(f"scored on part of the split ({', '.join(partial)})")
    return "; ".join(why) or None


def description(ctx, md: str, png: Path, done: int, total: int) -> str:
    """The parent run's description (MLflow's note, Markdown): the table (``md``: stamp, table and
    its footer with ρ) and the figure (the run's own artifact); the table is left out (a pointer
    instead) when it does not fit MLflow's limit."""
    head = (f"**{ctx.spec.title}** — profile `{ctx.spec.profile}`, study `{ctx.study_name}`: "
            f"{done}/{total} trials complete.\n\n")
    figure = f"\n![{png.name}](get-artifact?path=results/{png.name}&run_uuid={ctx.parent_id})\n"
    text = head + md + figure
    if len(text) > NOTE_LIMIT:
        text = head + f"The table is too long for a description: see `results/{png.stem}.md`, `table.json`.\n" + figure
    return text


def numeric_table(made: dict) -> pd.DataFrame:
    """The table's numbers as the CSV has them (means and stds apart): what MLflow can sort and chart."""
    return pd.read_csv(io.StringIO(made["csv"]))


def table_stem(out_dir: Path, stem: str, study_name: str, uid: str) -> str:
    """The file stem of a study's tables: ``<name>[-<profile>]``, owned by the first study that wrote
    it (``.<stem>.owner``); another study of the same file and profile (``--study``, ``--reset``)
    writes beside it, ``<stem>.<uid>``, and never over it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    owner = out_dir / f".{stem}.owner"
    if not owner.exists():
        atomic.write_text(owner, json.dumps({"study": study_name, "uid": uid}))
    if json.loads(owner.read_text())["uid"] == uid:
        return stem
    beside = f"{stem}.{uid[:8]}"
    print(f"{out_dir / stem}.* belong to another study: this one's tables go to {out_dir / beside}.*", flush=True)
    return beside


def report(ctx, out_dir: Path, finished: bool) -> dict[str, Path]:
    """Build the table from the study, write results/<name>[-<profile>].{md,csv,tex,png}, log
    them to the parent run (its description, table.json, summary metrics), print the Markdown."""
    spec, strategy = ctx.spec, ctx.strategy
    study = ctx.study()
    stem = table_stem(out_dir, spec.name if spec.profile == "default" else f"{spec.name}-{spec.profile}",
                      ctx.study_name, ctx.uid)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex", "png")}
    made = strategy.table(trial_records(study, strategy), title=f"{spec.title} [{spec.profile}]")
    failed = strategy.failed(study)
    md = tables.to_markdown(made["table"]) + made["md_footer"]
    if failed:
        md += f"\nFailed: {', '.join(failed)} (errors: the trials' `error` user attr and the MLflow runs' tag).\n"
    smoke = meaningless(ctx)
    if smoke:
        tables.stamp(made["figure"], "SMOKE TEST: the numbers mean nothing")
        md = f"**Smoke test: these numbers mean nothing** ({smoke}).\n\n" + md
    atomic.write_text(paths["md"], md)
    atomic.write_text(paths["csv"], made["csv"])
    atomic.write_text(paths["tex"], tables.to_latex(made["table"], caption=f"{spec.title} ({spec.profile} profile)",
                                                    label=f"tab:{stem}"))
    atomic.write_with(paths["png"], lambda fh: made["figure"].savefig(fh, format="png", dpi=120))
    plt.close(made["figure"])
    client = ctx.tracking.client
    for p in paths.values():
        client.log_artifact(ctx.parent_id, str(p), "results")
    log_table(client, ctx.parent_id, numeric_table(made))
    for name, value in made["metrics"].items():
        client.log_metric(ctx.parent_id, name, value)
    done, total = strategy.progress(study)
    client.set_tag(ctx.parent_id, "rvosflow.progress", f"{done}/{total}")
    client.set_tag(ctx.parent_id, NOTE_TAG, description(ctx, md, paths["png"], done, total))
    if finished:
        client.set_terminated(ctx.parent_id, "FAILED" if failed else "FINISHED")
    c = counts(study)
    print(f"\n{spec.title} -- profile {spec.profile}, study {ctx.study_name}: {done}/{total} complete, "
          + ", ".join(f"{k.lower()} {v}" for k, v in sorted(c.items())) + "\n", flush=True)
    print(md, flush=True)
    print("written: " + ", ".join(str(p) for p in paths.values()), flush=True)
    return paths
