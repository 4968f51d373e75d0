"""Table 3 of FlowRVS: the VAE decoder, frozen vs fine-tuned (Recon and Perf), beside the paper.

    python -m experiments.table3 [--profile default|smoke|gpu] [--file sweeps/table3.yaml] [--out results]
    make ablation-table3 [PROFILE=smoke]

Stages (``sweeps/table3.yaml`` says why it is not an Optuna grid): ``flow`` trains one flow model
(``python run.py`` with the profile's overrides); ``decoder`` tunes the VAE decoder once
(``rvosflow.decoder.tune``) and measures Recon for both decoders; ``perf_frozen`` / ``perf_tuned``
validate the same flow checkpoint with each decoder. Writes ``results/table3-<profile>.{md,csv,tex}``
(and ``.json`` with every stage's figures and time), and logs one MLflow parent run with a child
run per stage (``mlflow.parentRunId``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from rvosflow import atomic, tables
from rvosflow.config import compose, resolve
from rvosflow.decoder import FROZEN, TUNED, tune
from rvosflow.errors import ArgumentParser, UserError, cli
from rvosflow.paths import PROJECT_ROOT
from rvosflow.tracking import context_tags, tracking_for, tracking_uri
from rvosflow.train import run

log = logging.getLogger(__name__)

PROFILE_KEYS = {"overrides", "flow", "decoder", "recon_limit"}
FILE_KEYS = {"command", "name", "title", "rows", "profiles"}


class Table3Error(UserError, ValueError):
    """A table3 file or profile that is not what this module reads."""


def load_spec(path, profile: str) -> tuple[dict, dict]:
    """The table file and the chosen profile, checked (a misspelt key is named with the allowed ones)."""
    spec = yaml.safe_load(Path(path).read_text())
    bad = set(spec) - FILE_KEYS
    if bad:
        raise Table3Error(f"{path}: unknown keys {sorted(bad)}; allowed: {sorted(FILE_KEYS)}")
    if [r["id"] for r in spec["rows"]] != ["frozen", "tuned"]:
        raise Table3Error(f"{path}: rows: expected ids frozen and tuned, found {[r['id'] for r in spec['rows']]}")
    if profile not in spec["profiles"]:
        raise Table3Error(f"--profile: unknown profile {profile!r}; allowed: {', '.join(spec['profiles'])}")
    prof = {"overrides": [], "flow": [], "decoder": [], "recon_limit": None, **(spec["profiles"][profile] or {})}
    bad = set(prof) - PROFILE_KEYS
    if bad:
        raise Table3Error(f"{path}: profiles.{profile}: unknown keys {sorted(bad)}; allowed: {sorted(PROFILE_KEYS)}")
    return spec, prof


def table(spec: dict, results: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table, numeric summary) from the stage results."""
    rows, nums = [], []
    for r in spec["rows"]:
        rid = r["id"]
        recon = results.get("recon", {}).get(rid, {})
        perf = results.get(f"perf_{rid}", {})
        fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        rows.append({"ID": rid, "Configuration": r["label"], "Recon J&F": fmt(recon.get("JF")),
                     "Recon (paper)": fmt(r["paper"]["Recon"]), "Perf J&F": fmt(perf.get("JF")),
                     "Perf J": fmt(perf.get("J")), "Perf F": fmt(perf.get("F")),
                     "Perf (paper)": fmt(r["paper"]["Perf"])})
        nums.append({"row": rid, "label": r["label"], "recon_JF": recon.get("JF"), "recon_J": recon.get("J"),
                     "recon_F": recon.get("F"), "perf_JF": perf.get("JF"), "perf_J": perf.get("J"),
                     "perf_F": perf.get("F"), "paper_recon": r["paper"]["Recon"], "paper_perf": r["paper"]["Perf"]})
    return pd.DataFrame(rows), pd.DataFrame(nums)


def write_tables(spec: dict, profile: str, results: dict, out_dir) -> dict[str, Path]:
    shown, summary = table(spec, results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{spec['name']}-{profile}"
    times = ", ".join(f"{k} {v:.0f} s" for k, v in results.get("seconds", {}).items())
    note = f"\nProfile `{profile}`; stage times: {times}.\n" if times else ""
    if results.get("flow", {}).get("reused"):
        note += f"The flow model was not trained here: `--flow-ckpt {results['flow']['checkpoint']}`.\n"
    files = {"md": stem.with_suffix(".md"), "csv": stem.with_suffix(".csv"), "tex": stem.with_suffix(".tex"),
             "json": stem.with_suffix(".json")}
    atomic.write_text(files["md"], f"# {spec['title']}\n\n" + tables.to_markdown(shown) + note)
    atomic.write_text(files["csv"], tables.to_csv(summary))
    atomic.write_text(files["tex"], tables.to_latex(shown, caption=f"{spec['title']} (profile {profile})",
                                                    label=f"tab:{spec['name']}"))
    atomic.write_text(files["json"], json.dumps(results, indent=2, default=str))
    return files


class Tracking:
    """The parent MLflow run and the children that are not `run()`s (decoder tuning)."""

    def __init__(self, cfg, name: str):
        # the sweeps' find-or-create of the experiment (this project's artifact folder, model-training kind)
        shared = tracking_for(tracking_uri(cfg), str(cfg.logger.experiment_name))
        self.client, self.experiment_id = shared.client, shared.experiment_id()
        self.parent = self.client.create_run(self.experiment_id, run_name=name,
                                             tags=context_tags({"table": "table3"})).info.run_id

    def child(self, name: str, params: dict, metrics: dict) -> str:
        run_id = self.client.create_run(self.experiment_id, run_name=name,
                                        tags={"mlflow.parentRunId": self.parent, "table": "table3"}).info.run_id
        for k, v in params.items():
            self.client.log_param(run_id, k, str(v))
        self.log_metrics(run_id, metrics)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def log_metrics(self, run_id: str, metrics: dict) -> None:
        for k, v in metrics.items():
            if v is not None:
                self.client.log_metric(run_id, k, float(v))

    def finish(self, status: str, files: dict | None = None) -> None:
        for path in (files or {}).values():
            self.client.log_artifact(self.parent, str(path))
        self.client.set_terminated(self.parent, status)


def run_table3(profile: str = "default", spec_file=PROJECT_ROOT / "sweeps" / "table3.yaml",
               out_dir=PROJECT_ROOT / "results", work_dir=None, extra: list[str] | tuple = (),
               flow_ckpt: str | None = None) -> dict:
    """Every stage of Table 3 for ``profile``; returns the results and writes the tables.

    ``flow_ckpt``: score this checkpoint (a run of the same model and data) instead of training the
    flow model, e.g. the checkpoint of an earlier ``python run.py``."""
    spec, prof = load_spec(spec_file, profile)
    work = Path(work_dir or PROJECT_ROOT / "outputs" / "table3" / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}")
    common = [*prof["overrides"], *extra]
    base_cfg = compose(common)
    track = Tracking(base_cfg, f"{spec['name']}-{profile}")
    tags = {"mlflow.parentRunId": track.parent, "table": "table3"}
    results: dict = {"profile": profile, "work_dir": str(work), "overrides": common, "seconds": {}, "recon": {}}
    t_all = time.perf_counter()
    status, files = "FAILED", None
    try:
        t0 = time.perf_counter()
        if flow_ckpt:
            flow = {"checkpoint": str(flow_ckpt), "reused": True}
            results["flow"] = flow
        else:
            flow = run(compose([*common, *prof["flow"], "logger.run_name=table3-flow"]), work / "flow", tags=tags)
            results["flow"] = {"JF": flow["JF"], "checkpoint": flow["checkpoint"], "mlflow_run_id": flow["mlflow_run_id"]}
            results["seconds"]["flow"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = tune(resolve(compose([*common, *prof["decoder"]])), work / "decoder", score=True,
                      recon_limit=prof["recon_limit"])
        results["decoder"] = {k: v for k, v in report.items() if not k.startswith("recon_")}
        results["recon"] = {name: report[f"recon_{name}"] for name in (FROZEN, TUNED)}
        results["seconds"]["decoder"] = time.perf_counter() - t0
        track.child("table3-decoder", {**report["settings"], "steps": report["steps"]},
                    {"decoder/seconds": report["seconds"], "decoder/loss_last20": report["loss_last20"],
                     **{f"recon/JF/{n}": r["JF"] for n, r in results["recon"].items()}})

        for name, choice in ((FROZEN, ["model.vae_decoder=frozen"]),
                             (TUNED, [f"model.vae_decoder_path={work / 'decoder'}"])):
            t0 = time.perf_counter()
            res = run(compose([*common, *prof["flow"], "mode=validate", f"ckpt_path={flow['checkpoint']}", *choice,
                               f"logger.run_name=table3-perf-{name}"]), work / f"perf_{name}", tags=tags)
            results[f"perf_{name}"] = {k: res[k] for k in ("J", "F", "JF", "mlflow_run_id")}
            track.log_metrics(res["mlflow_run_id"], {"recon/JF": results["recon"][name]["JF"]})
            results["seconds"][f"perf_{name}"] = time.perf_counter() - t0
        results["seconds"]["total"] = time.perf_counter() - t_all
        files = write_tables(spec, profile, results, out_dir)
        track.log_metrics(track.parent, {f"{k}/JF/{n}": (results["recon"][n]["JF"] if k == "recon" else
                                                         results[f"perf_{n}"]["JF"])
                                         for k in ("recon", "perf") for n in (FROZEN, TUNED)})
        status = "FINISHED"
    finally:
        track.finish(status, files)
    return results


def main(argv: list[str] | None = None) -> int:
    """The CLI; bad input is one line, exit 2 (:func:`rvosflow.errors.cli`)."""
    return cli(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m experiments.table3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--file", default=str(PROJECT_ROOT / "sweeps" / "table3.yaml"))
    parser.add_argument("--out", default=str(PROJECT_ROOT / "results"))
    parser.add_argument("--work-dir", default=None, help="stage folders (default outputs/table3/<profile>-<time>)")
    parser.add_argument("--flow-ckpt", default=None,
                        help="score this flow checkpoint (same model and data) instead of training one")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    r = run_table3(args.profile, args.file, args.out, args.work_dir, args.overrides, args.flow_ckpt)
    print(f"Table 3 ({args.profile}, {r['seconds']['total'] / 60:.1f} min): "
          f"frozen Recon {r['recon']['frozen']['JF']:.1f} Perf {r['perf_frozen']['JF']:.1f} | "
          f"tuned Recon {r['recon']['tuned']['JF']:.1f} Perf {r['perf_tuned']['JF']:.1f}  -> "
          f"{Path(args.out) / ('table3-' + args.profile)}.{{md,csv,tex}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
