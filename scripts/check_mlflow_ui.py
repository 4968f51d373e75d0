"""Look at a sweep the way a researcher does: start `mlflow ui` on 127.0.0.1, open the sweep's
parent run and one child run in headless Chromium (Debian's `chromium` package), check that
what matters renders, and keep screenshots.

    python scripts/check_mlflow_ui.py                      # newest sweep in ./mlflow.db
    python scripts/check_mlflow_ui.py --db path/mlflow.db --study table2-smoke --out results/ui

Checks (each page is rendered by MLflow's React app, so its text is read from the live DOM):
- the parent run's page names the study and lists its child runs by name (nested trials);
- the parent's artifacts list the sweep table (``table.json``, logged with ``mlflow.log_table``);
- a child run's page names the trial, and its artifacts list the overlays.
Exit status 1 when a check fails; every page's screenshot is written either way.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = (  # headless as root in a closed network (background networking would be refused)
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(db: Path, port: int, timeout_s: float = 120.0):
    """`mlflow ui` on the SQLite store ``db``, until the block ends."""
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{db.resolve()}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not start on port {port} (exit {proc.poll()})")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()


def chromium(url: str, profile: Path, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    """The rendered DOM of ``url`` (and a screenshot when asked), after ``budget_ms`` of page time."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise RuntimeError("chromium not found: install Debian's package (apt-get install chromium)")
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000",
            f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=False)
    out = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False)
    return out.stdout


def find_sweep(client, study: str | None):
    """The newest sweep parent run (or the one named ``study``) and its children."""
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`rvosflow.study` != ''" if study is None else f"tags.`rvosflow.study` = '{study}'",
        order_by=["attributes.start_time DESC"], max_results=50)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        raise SystemExit(f"error: no sweep parent run{f' for study {study!r}' if study else ''} in this store")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    return parent, children


def check(db: Path, out: Path, study: str | None = None) -> list[str]:
    """Render the pages, write screenshots into ``out``, return the failed checks (empty: all fine)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db.resolve()}")
    parent, children = find_sweep(client, study)
    if not children:
        return [f"sweep {parent.info.run_name}: no child runs"]
    child = children[0]
    exp = parent.info.experiment_id
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    with tempfile.TemporaryDirectory() as profile, mlflow_ui(db, free_port()) as ui:
        pages = {
            "parent": (f"{ui}/#/experiments/{exp}/runs/{parent.info.run_id}", [parent.info.run_name, "Child runs"]),
            "parent-artifacts": (f"{ui}/#/experiments/{exp}/runs/{parent.info.run_id}/artifacts", ["table.json"]),
            "child": (f"{ui}/#/experiments/{exp}/runs/{child.info.run_id}", [child.info.run_name, parent.info.run_name]),
            "child-artifacts": (f"{ui}/#/experiments/{exp}/runs/{child.info.run_id}/artifacts", ["overlays"]),
        }
        for name, (url, expected) in pages.items():
            dom = chromium(url, Path(profile), out / f"{name}.png")
            missing = [text for text in expected if text not in dom]
            if name == "parent":  # the page lists the first ten children (then "Load more")
                shown = [c.info.run_name for c in children if f">{c.info.run_name}<" in dom]
                if len(shown) < min(3, len(children)):
                    missing.append(f"child run names (found {len(shown)} of {len(children)})")
            status = "ok" if not missing else f"MISSING {missing}"
            print(f"{name:17s} {status}  ({out / f'{name}.png'})")
            failures += [f"{name}: {text!r} not rendered at {url}" for text in missing]
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("mlflow.db"))
    parser.add_argument("--study", default=None, help="the sweep's study name (default: the newest sweep)")
    parser.add_argument("--out", type=Path, default=Path("results/ui"), help="folder for the screenshots")
    args = parser.parse_args(argv)
    if not args.db.is_file():
        print(f"error: --db: expected an MLflow SQLite store, found nothing at {args.db}", file=sys.stderr)
        return 2
    failures = check(args.db, args.out, args.study)
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
