"""Look at a sweep the way a researcher does: start `mlflow ui` on 127.0.0.1, open the sweep's
parent run and one child run in headless Chromium (Debian's `chromium` package, driven by
Playwright), check that what matters renders, and keep screenshots.

    python scripts/check_mlflow_ui.py                      # newest sweep in ./mlflow.db
    python scripts/check_mlflow_ui.py --db path/mlflow.db --study table2-smoke --out docs/ui

Checks (each page is rendered by MLflow's React app, so its text is read from the live DOM):
- parent: names the study and lists its child runs by name (nested trials); its description holds
  the sweep table (its header, ρ) and the figure, loaded;
- parent-artifacts: the sweep table ``table.json`` (``mlflow.log_table``);
- child: the trial's name and its parent's, and *Datasets* lists the run's first data set (name,
  digest, context), not "None";
- child-logged-models: *Logged models* lists the run's checkpoint as a model, Ready;
- child-model-metrics: the training curves, and the image chart of the validation overlays shows
  the picture of the last step (its "Show run parameters" switched off, as MLflow 3.17 lists every
  parameter above the picture);
- child-system-metrics: *System metrics* has at least one chart;
- child-artifacts: the overlays (and the flow's trajectory, for a video2mask/noise2mask trial);
- model-artifacts: the logged model's files, to download (``last.ckpt`` or, with
  ``logger.upload_weights=false``, only the list ``files.json``).
Exit status 1 when a check fails; every page's screenshot is written either way.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [  # headless as root in a closed network (background networking would be refused)
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1100}
WAIT_MS = 60_000  # for a page's first text: MLflow's app loads its chunks, then queries the store
SEARCH_CHARTS = "Search metric charts"  # the charts tabs' filter (cards out of view are not rendered)
PAGES = ("parent", "parent-artifacts", "child", "child-logged-models", "child-model-metrics", "child-system-metrics",
         "child-artifacts", "model-artifacts")


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


@contextlib.contextmanager
def browser_page():
    """A Playwright page of Debian's headless Chromium (no browser download)."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise RuntimeError("chromium not found: install Debian's package (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


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


def _open(page, url: str, first_text: str) -> None:
    """``url``, once ``first_text`` shows (a text or a field's placeholder); MLflow's assistant panel
    closed (it takes a quarter of the width)."""
    page.goto(url)
    page.get_by_text(first_text).or_(page.get_by_placeholder(first_text)).first.wait_for(timeout=WAIT_MS)
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count() and close.first.is_visible():
        close.first.click()
    page.wait_for_timeout(1500)  # the rest of the page's queries


def _loaded(page, selector: str) -> bool:
    """Whether an <img> matching ``selector`` has its picture (not a broken link)."""
    return any(img.evaluate("e => e.complete && e.naturalWidth > 0") for img in page.query_selector_all(selector))


def _filter_charts(page, text: str) -> None:
    page.get_by_placeholder(SEARCH_CHARTS).fill(text)
    page.wait_for_timeout(1000)


def _show_image_step(page, key: str, step: int) -> None:
    """The image chart ``key``: run parameters hidden, the slider at ``step`` (its Configure dialog)."""
    _filter_charts(page, key)
    title = page.get_by_text(key, exact=True).first
    card = title.locator("xpath=ancestor::*[.//*[@data-component-id='fullscreen_button_chartcard']][1]")
    card.locator("[data-component-id$='chartcard.common.tsx_158']").click()  # the card's menu
    page.get_by_role("menuitem", name="Configure").click()
    switch = page.locator('[data-component-id="mlflow.charts.image_grid_configure.show_run_params"] [role=switch]')
    switch.wait_for(timeout=WAIT_MS)
    if switch.get_attribute("aria-checked") == "true":
        switch.click()
    box = page.get_by_role("dialog").locator("input[type=number]").first
    if box.is_enabled():  # disabled when the key has one step only
        box.fill(str(step))
        box.press("Enter")
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Save changes").click()
    page.wait_for_timeout(1500)


def check(db: Path, out: Path, study: str | None = None) -> list[str]:
    """Render the pages, write screenshots into ``out``, return the failed checks (empty: all fine)."""
    import mlflow
    from playwright.sync_api import Error as PlaywrightError

    from rvosflow.tracking import UI_MODE

    client = mlflow.MlflowClient(f"sqlite:///{db.resolve()}")
    parent, children = find_sweep(client, study)
    if not children:
        return [f"sweep {parent.info.run_name}: no child runs"]
    # a finished flow trial when there is one: it has overlays and a trajectory to show
    flows = [c for c in children if c.info.status == "FINISHED" and c.data.tags.get("paradigm") in ("video2mask", "noise2mask")]
    child = (flows or children)[0]
    inputs = child.inputs.dataset_inputs
    models = client.search_logged_models([child.info.experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'")
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val/JF"))
    exp = parent.info.experiment_id
    out.mkdir(parents=True, exist_ok=True)
    failures = []

    with mlflow_ui(db, free_port()) as ui, browser_page() as page:
        def url(run, tab=""):
            return f"{ui}/#/experiments/{exp}/runs/{run.info.run_id}{tab}?{UI_MODE}"

        def visit(name: str, address: str, first: str, look) -> None:
            """Open the page, run its checks (``look`` returns what is missing), keep a screenshot."""
            try:
                _open(page, address, first)
                missing = look()
            except PlaywrightError as exc:
                missing = [f"the page ({str(exc).splitlines()[0]})"]
            page.screenshot(path=str(out / f"{name}.png"))
            print(f"{name:21s} {'ok' if not missing else f'MISSING {missing}'}  ({out / f'{name}.png'})")
            failures.extend(f"{name}: {m} not rendered at {address}" for m in missing)

        def texts(*expected: str, wait_ms: int = 10_000) -> list[str]:
            """The ``expected`` texts the page does not show, after up to ``wait_ms`` for them to render
            (charts draw after their data arrives; on a loaded machine, seconds after the page)."""
            deadline = time.monotonic() + wait_ms / 1000
            while True:
                body = page.inner_text("body")
                missing = [t for t in expected if t not in body]
                if not missing or time.monotonic() > deadline:
                    return missing
                page.wait_for_timeout(500)

        def parent_page():
            more = page.get_by_text("Show more")
            if more.count():
                more.first.click()
                page.wait_for_timeout(1000)
            missing = texts(parent.info.run_name, "Configuration", "Paper J&F", "Spearman ρ")
            shown = [c.info.run_name for c in children if page.get_by_text(c.info.run_name, exact=True).count()]
            if len(shown) < min(3, len(children)):  # the page lists the first children (then "Load more")
                missing.append(f"child run names (found {len(shown)} of {len(children)})")
            if not _loaded(page, 'img[src*="get-artifact?path=results/"]'):
                missing.append("the table's figure in the description")
            return missing

        def datasets():
            if not inputs:
                return ["a data set (the run logged none)"]
            first = inputs[0]
            return texts("Datasets", f"{first.dataset.name} ({first.dataset.digest})", first.tags[0].value.capitalize())

        def logged_models():
            if not models:
                return ["a logged model (the run logged none)"]
            box = page.get_by_text(f"Logged models ({len(models)})").first
            box.wait_for(timeout=WAIT_MS)
            box.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            return texts(models[0].name, "Ready")

        def model_metrics():
            _filter_charts(page, "train/")
            missing = texts("loss", "lr", "grad_norm")
            if not steps:
                return [*missing, "in-training validations (no val/JF)"]
            pictures = ("overlays", "trajectory") if flows else ("overlays",)
            for key in (f"{stage}/{what}" for what in pictures for stage in ("final", "val")):
                _show_image_step(page, key, steps[-1])
                if not _loaded(page, f'img[src*="{key.replace("/", "~")}%2Bstep%2B{steps[-1]}%2B"]'):
                    missing.append(f"the {key} image at step {steps[-1]}")
            _filter_charts(page, "overlays")  # the image charts only (the filter keeps them all)
            return missing

        def system_metrics():
            section = page.get_by_text("System metrics", exact=True).last  # the section's header, not the tab
            section.wait_for(timeout=WAIT_MS)
            expected = ("cpu_utilization_percentage", "system_memory_usage_megabytes")
            for _ in range(2):  # the section may open collapsed: its header toggles it
                if not texts(*expected):
                    break
                section.click()
                page.wait_for_timeout(1500)
            section.evaluate("e => e.scrollIntoView({block: 'start'})")  # its charts in view
            page.wait_for_timeout(1000)
            return texts(expected[0])  # one chart at least (the cards out of view are not rendered)

        visit("parent", url(parent), "Child runs", parent_page)
        visit("parent-artifacts", url(parent, "/artifacts"), "table.json", lambda: texts("results"))
        visit("child", url(child), child.info.run_name, lambda: [*texts(parent.info.run_name), *datasets()])
        visit("child-logged-models", url(child), child.info.run_name, logged_models)
        visit("child-model-metrics", url(child, "/model-metrics"), SEARCH_CHARTS, model_metrics)
        visit("child-system-metrics", url(child, "/system-metrics"), SEARCH_CHARTS, system_metrics)
        visit("child-artifacts", url(child, "/artifacts"), "overlays",
              lambda: texts("trajectory", "images") if flows else texts("images"))
        if models:
            files = [a.path for a in client.list_logged_model_artifacts(models[0].model_id)]
            visit("model-artifacts", f"{ui}/#/experiments/{exp}/models/{models[0].model_id}/artifacts?{UI_MODE}",
                  "files.json", lambda: texts(*files))
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
