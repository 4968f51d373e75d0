"""Result tables from sweep trials: pure functions from records to pandas DataFrames and text.

A *record* is one trial as a plain dict::

    {"row": "e", "seed": 1, "state": "COMPLETE", "JF": 57.1, "J": 53.0, "F": 61.2, "TC": 4.2, "number": 7,
     "JF/colour": 60.2, "JF/multi-object": 41.0, "expressions": [ExpressionRecord, ...]}

(scores in percent; ``JF/<kind>`` only where the benchmark knows expression kinds; ``infer_s``, the
scoring's seconds per video, where measured; ``state`` an Optuna trial state name; ``expressions``
the run's per-expression records, or None). A *row spec* describes one table line; its
``settings`` are the axes of its resolved config, by key (``sweep.strategy.table_settings``),
``reference`` the row its delta is taken against, and ``model``, where rows share trained models,
its model's label (rows with the same label score one model per seed)::

    {"id": "e", "label": "+ BBS p=0.5", "paper": {"JF": 57.9, "J": 53.8, "F": 62.1}, "reference": "base",
     "settings": {"bbs.p": 0.5, "spa.enabled": False, "dvi.enabled": False, "wi.enabled": True},
     "model": "M1"}

A row's delta is its J&F minus its reference's, with a 95% CI from a paired bootstrap over
expressions, two-level over seeds when there are several (``rvosflow.metrics.bootstrap``: 10,000
resamples, fixed seed, so a table built from the same trials always shows the same CIs).

The settings columns are the axes declared as table columns (``rvosflow.schema``), plus any other
axis whose value differs between the rows.

:func:`summarize` aggregates the completed trials of each row over seeds (mean and sample std);
:func:`display_table` formats that as ``mean ± std`` strings, and :func:`to_markdown`,
:func:`to_csv`, :func:`to_latex` write it out. :func:`search_table` lists a search's trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from rvosflow.data.schema import EXPRESSION_KINDS
from rvosflow.errors import PairingError
from rvosflow.metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, paired_bootstrap
from rvosflow.schema import axes

METRICS = ("JF", "J", "F")
METRIC_NAMES = {"JF": "J&F", "J": "J", "F": "F"}
INFER_COLUMN = "Inference s/video"
SHARED_MODELS_NOTE = ("Rows with the same Model were scored from one trained model per seed "
                      "(trained once; each row scored its checkpoint under its own inference settings).")


def axis_value(run, key: str):
    """The value of a dotted axis ``key`` of a resolved run config."""
    node = run
    for part in key.split("."):
        node = getattr(node, part)
    return node


def setting_columns(rows: Sequence[Mapping]) -> dict[str, str]:
    """``{axis key: label}`` of the settings a table of ``rows`` shows: the column axes, and the
    other axes whose values differ between the rows (a solver sweep shows its steps and shift)."""
    seen = [r.get("settings") or {} for r in rows]
    return {a.key: a.label for a in axes()
            if a.key in set().union(*seen) and (a.column or len({repr(s.get(a.key)) for s in seen}) > 1)}


def kind_metrics(records: Iterable[Mapping]) -> list[str]:
    """The per-kind J&F keys (``JF/<kind>``) present in any record, in EXPRESSION_KINDS order."""
    present = {k for r in records for k in r if k.startswith("JF/")}
    return [f"JF/{kind}" for kind in EXPRESSION_KINDS if f"JF/{kind}" in present]


def summarize(records: Iterable[Mapping], rows: Sequence[Mapping]) -> pd.DataFrame:
    """One line per row spec (in their order): settings, seeds done, mean/std of J&F, J, F (and
    of J&F per expression kind, where the records have it), of TC, the delta against the row's
    reference with its CI (:func:`reference_delta`), paper.

    Only ``COMPLETE`` records count towards the scores; ``failed`` counts ``FAIL`` records of the
    row that no later attempt with the same seed completed. Rows without a completed trial have
    NaN scores. ``std`` is the sample standard deviation (NaN with a single seed).
    """
    records = list(records)
    kinds = kind_metrics(records)
    recs = pd.DataFrame(records, columns=["row", "seed", "state", *METRICS, "TC", *kinds, "infer_s"])
    lines = []
    columns = setting_columns(rows)
    shared = any("model" in spec for spec in rows)
    for spec in rows:
        mine = recs[recs["row"] == spec["id"]]
        done = mine[mine["state"] == "COMPLETE"]
        failed_seeds = set(mine.loc[mine["state"] == "FAIL", "seed"]) - set(done["seed"])
        line = {"id": spec["id"], "configuration": spec.get("label", spec["id"])}
        for key in columns:
            line[key] = (spec.get("settings") or {}).get(key)
        if shared:
            line["model"] = spec.get("model")
        line["seeds"] = int(done["seed"].nunique())
        line["failed"] = len(failed_seeds)
        for m in (*METRICS, *kinds):
            values = done[m].astype(float).dropna()
            line[f"{m}_mean"] = values.mean() if len(values) else math.nan
            line[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        infer = done["infer_s"].astype(float).dropna()
        line["infer_s_mean"] = infer.mean() if len(infer) else math.nan
        tc = done["TC"].astype(float).dropna() if "TC" in done else pd.Series(dtype=float)
        line["TC_mean"] = tc.mean() if len(tc) else math.nan
        line["TC_std"] = tc.std(ddof=1) if len(tc) > 1 else math.nan
        line.update(reference_delta(records, spec))
        paper = spec.get("paper") or {}
        for m in METRICS:
            line[f"paper_{m}"] = paper.get(m, math.nan)
        lines.append(line)
    return pd.DataFrame(lines)


def _seed_runs(records: Sequence[Mapping], row: str) -> list | None:
    """The per-expression records of ``row``'s completed trials, one run per seed (seed order);
    None when the row has none, or when a completed trial's records are not at hand."""
    done = sorted((r for r in records if r["row"] == row and r["state"] == "COMPLETE"), key=lambda r: r["seed"])
    if not done or any(not r.get("expressions") for r in done):
        return None
    return [r["expressions"] for r in done]


def reference_delta(records: Sequence[Mapping], spec: Mapping) -> dict:
    """``reference``, ``delta_JF`` with ``delta_JF_low``/``delta_JF_high`` (the 95% CI), ``significant``
    (the CI excludes 0) and ``delta_note`` (why there is none) for one row spec."""
    out = {"reference": spec.get("reference"), "delta_JF": math.nan, "delta_JF_low": math.nan,
           "delta_JF_high": math.nan, "significant": None, "delta_note": ""}
    if not spec.get("reference"):
        return out
    row, ref = _seed_runs(records, spec["id"]), _seed_runs(records, spec["reference"])
    if row is None or ref is None:
        out["delta_note"] = "no per-expression records yet"
        return out
    try:
        d = paired_bootstrap(row, ref, row_name=f"row {spec['id']}", reference_name=f"row {spec['reference']}")
    except PairingError as exc:  # scored on other expressions (another split, a limit): not comparable
        out["delta_note"] = str(exc)
        return out
    out.update(delta_JF=d.delta, delta_JF_low=d.low, delta_JF_high=d.high, significant=d.significant)
    return out


def delta_with_ci(summary_line: Mapping, digits: int = 1) -> str:
    """``"+2.3 [+0.8, +3.9] *"``: the delta, its 95% CI and ``*`` when the CI excludes 0; ``"–"`` without one."""
    d = summary_line.get("delta_JF")
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "–"
    text = f"{d:+.{digits}f} [{summary_line['delta_JF_low']:+.{digits}f}, {summary_line['delta_JF_high']:+.{digits}f}]"
    return text + (" *" if summary_line["significant"] else "")


def delta_footer(summary: pd.DataFrame) -> str:
    """What the delta column means, and which rows' differences are real ("" for a table without references)."""
    if not summary["reference"].notna().any():
        return ""
    shown = summary[summary["delta_JF"].astype(float).notna()]
    if shown.empty:
        return "Δ J&F: no row and its reference have per-expression records yet."
    sig = [str(i) for i, s in zip(shown["id"], shown["significant"]) if s]
    return (f"Δ J&F: the row's J&F minus its reference row's (Ref), with a 95% CI from a paired bootstrap over "
            f"expressions (two-level over seeds; {DEFAULT_RESAMPLES:,} resamples, seed {DEFAULT_SEED}); "
            f"* = the CI excludes 0: {', '.join(sig) if sig else 'none'} of {len(shown)} rows.")


def mean_pm_std(mean: float, std: float, digits: int = 1, pm: str = "±") -> str:
    """``"57.9 ± 1.2"``; ``"57.9"`` when there is no std (one seed); ``"–"`` when there is no mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} {pm} {std:.{digits}f}"


def _setting(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    return f"{value:g}" if isinstance(value, float) else str(value)


def display_table(summary: pd.DataFrame, digits: int = 1, pm: str = "±") -> pd.DataFrame:
    """The human table: ID, configuration, BBS p, SPA, DVI, WI, J&F, J, F (mean ± std over seeds),
    J&F per expression kind where known, the paper's J&F beside ours, and the seeds done."""
    out = pd.DataFrame({"ID": summary["id"], "Configuration": summary["configuration"]})
    labels = {a.key: a.label for a in axes()}
    for key in [c for c in summary.columns if c in labels]:
        out[labels[key]] = [_setting(v) for v in summary[key]]
    if "model" in summary.columns:
        out["Model"] = [_setting(v) for v in summary["model"]]
    for m in METRICS:
        out[METRIC_NAMES[m]] = [mean_pm_std(a, b, digits, pm) for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    for col in summary.columns:
        if col.startswith("JF/") and col.endswith("_mean"):
            m = col[: -len("_mean")]
            out[f"J&F {m[3:]}"] = [mean_pm_std(a, b, digits, pm) for a, b in zip(summary[col], summary[f"{m}_std"])]
    if "TC_mean" in summary and summary["TC_mean"].astype(float).notna().any():
        out["TC"] = [mean_pm_std(a, b, digits, pm) for a, b in zip(summary["TC_mean"], summary["TC_std"])]
    if "reference" in summary and summary["reference"].notna().any():
        out["Ref"] = [r if isinstance(r, str) else "–" for r in summary["reference"]]
        out["Δ J&F [95% CI]"] = [delta_with_ci(line, digits) for line in summary.to_dict("records")]
    if "infer_s_mean" in summary.columns and summary["infer_s_mean"].notna().any():
        out[INFER_COLUMN] = [mean_pm_std(v, math.nan, 3) for v in summary["infer_s_mean"]]
    out["Paper J&F"] = [mean_pm_std(v, math.nan, digits) for v in summary["paper_JF"]]
    out["Seeds"] = [f"{s}" + (f" ({f} failed)" if f else "") for s, f in zip(summary["seeds"], summary["failed"])]
    return out


def _with_paper(summary: pd.DataFrame) -> pd.DataFrame:
    """Our row means and the paper's J&F, over the rows that have both."""
    return summary[["JF_mean", "paper_JF"]].astype(float).dropna()


def _spearman(both: pd.DataFrame) -> float:
    return float(both["JF_mean"].rank().corr(both["paper_JF"].rank()))  # Spearman = Pearson on ranks


def agreement(summary: pd.DataFrame) -> dict[str, float]:
    """Numbers that sum a table up: the Spearman ρ of our row means with the paper's J&F (rows that
    have both), the span of our row means, the best row mean, the mean seed std, rows scored."""
    scored = summary["JF_mean"].astype(float).dropna()
    out = {"rows_scored": float(len(scored))}
    if len(scored):
        out.update({"JF_best_row": float(scored.max()), "JF_span": float(scored.max() - scored.min())})
    stds = summary["JF_std"].astype(float).dropna()
    if len(stds):
        out["JF_seed_std_mean"] = float(stds.mean())
    both = _with_paper(summary)
    if len(both) >= 2:
        out["spearman_rho_paper"] = _spearman(both)
    if "delta_JF" in summary:
        for line in summary.to_dict("records"):
            if not math.isnan(float(line["delta_JF"])):
                out.update({f"delta_JF/{line['id']}": float(line["delta_JF"]),
                            f"delta_JF_low/{line['id']}": float(line["delta_JF_low"]),
                            f"delta_JF_high/{line['id']}": float(line["delta_JF_high"]),
                            f"significant/{line['id']}": float(bool(line["significant"]))})
    return out


def paper_agreement(summary: pd.DataFrame) -> str:
    """A footer line: the Spearman rank correlation between our rows' mean J&F and the paper's
    (over rows that have both), and the span of our row means."""
    both = _with_paper(summary)
    if len(both) < 2:
        return "Spearman ρ with the paper's J&F: – (fewer than two scored rows)"
    span = both["JF_mean"].max() - both["JF_mean"].min()
    return (f"Spearman ρ between our row means and the paper's J&F: {_spearman(both):.2f} over {len(both)} rows; "
            f"our rows span {span:.1f} J&F points.")


def to_markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True) + "\n"  # keep "3.0", "0.50"


def to_csv(summary: pd.DataFrame) -> str:
    """Machine-readable: the numeric summary (means and stds in separate columns)."""
    return summary.to_csv(index=False, float_format="%.4f")


def _latex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "✓": r"\checkmark", "✗": r"--", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "ρ": r"$\rho$"}
    return "".join(repl.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs ``tabular`` (in a ``table`` float when a caption is given); needs no jinja2."""
    cols = list(table.columns)
    align = "".join("l" if c in ("ID", "Configuration") else "c" for c in cols)
    lines = [r"\begin{tabular}{" + align + "}", r"\toprule",
             " & ".join(_latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for _, r in table.iterrows():
        lines.append(" & ".join(_latex_escape(r[c]) for c in cols) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    body = "\n".join(lines)
    if caption is None:
        return body + "\n"
    head = [r"\begin{table}[t]", r"\centering", r"\caption{" + _latex_escape(caption) + "}"]
    if label:
        head.append(r"\label{" + label + "}")
    return "\n".join([*head, body, r"\end{table}"]) + "\n"


def search_table(records: Iterable[Mapping], params: Sequence[str], digits: int = 1) -> pd.DataFrame:
    """A search's trials, best first: trial number, state, the searched parameters, J&F, J, F."""
    recs = list(records)
    out = pd.DataFrame({
        "Trial": [r.get("number") for r in recs],
        "State": [r.get("state") for r in recs],
        **{p: [(r.get("params") or {}).get(p) for r in recs] for p in params},
        **{METRIC_NAMES[m]: [r.get(m, math.nan) for r in recs] for m in METRICS},
    })
    for m in METRICS:
        out[METRIC_NAMES[m]] = out[METRIC_NAMES[m]].astype(float).round(digits)
    return out.sort_values(["J&F", "Trial"], ascending=[False, True], na_position="last").reset_index(drop=True)


def _value_labels(values) -> list[str]:
    return ["–" if math.isnan(v) else f"{v:.1f}" for v in values]


def plot_rows(summary: pd.DataFrame, title: str | None = None):
    """A matplotlib Figure: J&F per row, ours (the mean over seeds; ± std bars where a row has two
    or more) beside the paper's, each bar labelled with its value (a 0.0 bar shows as a line and
    its label, a row without a score as "–"), rows named by their configuration, and the Spearman
    ρ with the paper in the caption."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(summary))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.8 * len(summary) + 2.5), 5.0))
    width = 0.38
    ours = summary["JF_mean"].astype(float).to_numpy()
    paper = summary["paper_JF"].astype(float).to_numpy()
    std = summary["JF_std"].astype(float).to_numpy()
    seeds = summary["seeds"].to_numpy()
    most = int(seeds.max()) if len(seeds) else 0
    spread = (seeds >= 2) & ~np.isnan(std)
    ax.bar(x - width / 2, np.nan_to_num(ours), width, color="C0", edgecolor="C0", linewidth=1.5, zorder=3,
                  label=f"ours (mean{' ± std' if spread.any() else ''} over {most} seed{'s' if most != 1 else ''})")
    theirs = ax.bar(x + width / 2, np.nan_to_num(paper), width, color="C1", alpha=0.6, edgecolor="C1", linewidth=1.5,
                    zorder=3, label="paper")
    if spread.any():
        ax.errorbar(x[spread] - width / 2, ours[spread], yerr=std[spread], fmt="none", ecolor="black", capsize=3, zorder=4)
    top = np.nanmax(np.concatenate([np.nan_to_num(ours) + np.where(spread, std, 0.0), np.nan_to_num(paper), [1.0]]))
    for xi, y, label in zip(x - width / 2, np.nan_to_num(ours) + np.where(spread, std, 0.0), _value_labels(ours)):
        ax.text(xi, y + 0.01 * top, label, ha="center", va="bottom", fontsize=8)  # above the error bar
    ax.bar_label(theirs, labels=_value_labels(paper), padding=2, fontsize=8, color="dimgray")
    ax.set_ylim(-0.01 * top, 1.15 * top)  # a 0.0 bar's edge is drawn just above the axis
    ax.axhline(0, color="black", linewidth=0.8, zorder=2)
    ax.set_xticks(x, [f"{label} ({i})" for i, label in zip(summary["id"], summary["configuration"])],
                  rotation=25, ha="right", fontsize=9)
    ax.set_ylabel("J&F (%)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.5, 0.015, paper_agreement(summary), ha="center", va="bottom", fontsize=9, wrap=True)
    return fig


def stamp(fig, text: str) -> None:
    """Write ``text`` across ``fig`` (a smoke table: its numbers mean nothing)."""
    fig.text(0.5, 0.55, text, ha="center", va="center", fontsize=20, color="red", alpha=0.35, rotation=12,
             fontweight="bold", zorder=10)


def plot_search(table: pd.DataFrame, params: Sequence[str], title: str | None = None):
    """A matplotlib Figure: J&F against each searched parameter (completed trials)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    done = table[table["State"] == "COMPLETE"]
    fig, axes = plt.subplots(1, max(1, len(params)), figsize=(4.0 * max(1, len(params)), 3.5), squeeze=False)
    for ax, p in zip(axes[0], params):
        ax.scatter(done[p].astype(float), done["J&F"].astype(float))
        ax.set_xlabel(p)
        ax.set_ylabel("J&F (%)")
        if p.endswith("lr"):
            ax.set_xscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_against(summary: pd.DataFrame, x: str, series: str | None = None, title: str | None = None):
    """A matplotlib Figure: J&F (mean with std error bars over seeds) against the axis ``x``, a
    line per value of ``series``; beside it the scoring's inference seconds per video."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = {a.key: a.label for a in axes()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    for value, part in (summary.groupby(series, sort=True) if series else [(None, summary)]):
        part = part.sort_values(x)
        name = f"{labels.get(series, series)} {_setting(value)}" if series else None
        left.errorbar(part[x].astype(float), part["JF_mean"].astype(float), yerr=part["JF_std"].astype(float).fillna(0.0),
                      marker="o", capsize=3, label=name)
        right.plot(part[x].astype(float), part["infer_s_mean"].astype(float), marker="o", label=name)
    for ax, ylabel in ((left, "J&F (%)"), (right, "inference s / video")):
        ax.set_xlabel(labels.get(x, x))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
