"""rvosflow.tables: records -> summary -> md/csv/tex, pure and fast."""

import io
import math

import pandas as pd
import pytest

from rvosflow import tables

ROWS = [
    {"id": "a", "label": "noise2mask", "paper": {"JF": 32.3, "J": 29.6, "F": 35.0},
     "settings": {"bbs.p": 0.0, "spa.enabled": False, "dvi.enabled": False, "wi.enabled": True}},
    {"id": "h", "label": "+ DVI (final model)", "paper": {"JF": 60.6, "J": 55.9, "F": 65.2},
     "settings": {"bbs.p": 0.5, "spa.enabled": True, "dvi.enabled": True, "wi.enabled": True}},
    {"id": "i", "label": "- WI", "paper": {"JF": 21.1, "J": 20.3, "F": 21.9},
     "settings": {"bbs.p": 0.5, "spa.enabled": True, "dvi.enabled": True, "wi.enabled": False}},
]


def rec(row, seed, state="COMPLETE", J=None, F=None):
    if state != "COMPLETE":
        return {"row": row, "seed": seed, "state": state, "JF": None, "J": None, "F": None}
    return {"row": row, "seed": seed, "state": state, "JF": (J + F) / 2, "J": J, "F": F}


RECORDS = [
    rec("a", 0, J=10.0, F=20.0), rec("a", 1, J=20.0, F=30.0),
    rec("h", 0, J=50.0, F=60.0), rec("h", 1, "FAIL"), rec("h", 2, "PRUNED"),
    rec("i", 0, "FAIL"), rec("i", 0, J=1.0, F=3.0),  # a retried seed that then completed
    rec("zz", 0, J=99.0, F=99.0),  # a row the table does not list is ignored
]


def test_summary_means_stds_seeds_and_failures():
    s = tables.summarize(RECORDS, ROWS)
    assert list(s["id"]) == ["a", "h", "i"]
    a, h, i = (s.iloc[k] for k in range(3))
    assert a["JF_mean"] == pytest.approx(20.0) and a["JF_std"] == pytest.approx(math.sqrt(50.0))
    assert a["J_mean"] == pytest.approx(15.0) and a["F_mean"] == pytest.approx(25.0)
    assert a["seeds"] == 2 and a["failed"] == 0
    assert h["seeds"] == 1 and h["failed"] == 1 and math.isnan(h["JF_std"])
    assert i["seeds"] == 1 and i["failed"] == 0 and i["JF_mean"] == pytest.approx(2.0)
    assert h["paper_JF"] == 60.6 and h["bbs.p"] == 0.5 and bool(h["spa.enabled"]) and not bool(s.iloc[2]["wi.enabled"])


def test_rows_without_results_have_nan_and_dash():
    s = tables.summarize([], ROWS)
    assert s["seeds"].tolist() == [0, 0, 0] and s["JF_mean"].isna().all()
    t = tables.display_table(s)
    assert t["J&F"].tolist() == ["–"] * 3 and t["Paper J&F"].tolist() == ["32.3", "60.6", "21.1"]


def test_display_table_columns_and_formatting():
    t = tables.display_table(tables.summarize(RECORDS, ROWS))
    assert list(t.columns) == ["ID", "Configuration", "BBS p", "SPA", "DVI", "WI", "J&F", "J", "F", "Paper J&F", "Seeds"]
    assert t.loc[0, "J&F"] == f"20.0 ± {math.sqrt(50):.1f}"
    assert t.loc[1, "J&F"] == "55.0" and t.loc[1, "Seeds"] == "1 (1 failed)"
    assert t.loc[1, "BBS p"] == "0.5" and t.loc[1, "SPA"] == "✓" and t.loc[2, "WI"] == "✗"


def test_mean_pm_std():
    assert tables.mean_pm_std(57.94, 1.26) == "57.9 ± 1.3"
    assert tables.mean_pm_std(57.94, math.nan) == "57.9"
    assert tables.mean_pm_std(math.nan, math.nan) == "–"


def test_markdown_csv_latex():
    s = tables.summarize(RECORDS, ROWS)
    t = tables.display_table(s)
    md = tables.to_markdown(t)
    assert md.splitlines()[0].startswith("| ID") and "60.6" in md and "±" in md
    back = pd.read_csv(io.StringIO(tables.to_csv(s)))
    assert list(back["id"]) == ["a", "h", "i"] and back.loc[0, "JF_mean"] == pytest.approx(20.0)
    assert {"JF_std", "J_mean", "F_std", "paper_JF", "seeds"} <= set(back.columns)
    tex = tables.to_latex(t, caption="Table 2 & co", label="tab:t2")
    assert r"\begin{tabular}{llccccccccc}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"$\pm$" in tex and r"J\&F" in tex and r"\label{tab:t2}" in tex and r"Table 2 \& co" in tex
    assert tex.count(r"\\") == 1 + len(t)


def test_search_table_sorts_best_first():
    recs = [
        {"number": 0, "state": "COMPLETE", "params": {"bbs.p": 0.1, "optim.lr": 1e-4}, "JF": 30.0, "J": 28.0, "F": 32.0},
        {"number": 1, "state": "PRUNED", "params": {"bbs.p": 0.8, "optim.lr": 1e-3}},
        {"number": 2, "state": "COMPLETE", "params": {"bbs.p": 0.5, "optim.lr": 3e-4}, "JF": 41.04, "J": 40.0, "F": 42.08},
    ]
    t = tables.search_table(recs, ["bbs.p", "optim.lr"])
    assert t["Trial"].tolist() == [2, 0, 1] and t.loc[0, "J&F"] == pytest.approx(41.0)
    assert list(t.columns) == ["Trial", "State", "bbs.p", "optim.lr", "J&F", "J", "F"]


def test_plots_are_figures(tmp_path):
    import matplotlib.pyplot as plt

    fig = tables.plot_rows(tables.summarize(RECORDS, ROWS), title="t")
    fig.savefig(tmp_path / "rows.png")
    plt.close(fig)
    recs = [{"number": 0, "state": "COMPLETE", "params": {"bbs.p": 0.1, "optim.lr": 1e-4}, "JF": 30.0, "J": 28.0, "F": 32.0}]
    fig = tables.plot_search(tables.search_table(recs, ["bbs.p", "optim.lr"]), ["bbs.p", "optim.lr"])
    fig.savefig(tmp_path / "search.png")
    plt.close(fig)
    assert (tmp_path / "rows.png").stat().st_size > 1000 and (tmp_path / "search.png").stat().st_size > 1000


def test_the_rows_figure_reads_without_the_table():
    import matplotlib.pyplot as plt

    # a: two seeds (a std), h: one seed, i: a score of 0.0 (two seeds, no spread)
    recs = [*RECORDS[:3], rec("i", 0, J=0.0, F=0.0), rec("i", 1, J=0.0, F=0.0)]
    summary = tables.summarize(recs, ROWS)
    fig = tables.plot_rows(summary, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["noise2mask (a)", "+ DVI (final model) (h)", "- WI (i)"]
    # error bars only where a row has two seeds or more: a and i, not h
    (bars,) = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars.lines[2][0].get_segments()) == 2
    shown = [t.get_text() for t in ax.texts]
    assert shown[:3] == ["20.0", "55.0", "0.0"]  # ours, over each bar (a 0.0 bar has its label)
    assert shown[3:] == ["32.3", "60.6", "21.1"]  # the paper's
    assert ax.get_ylim()[0] < 0  # the 0.0 bar's edge shows above the axis
    assert "Spearman ρ" in " ".join(t.get_text() for t in fig.texts)  # ρ in the caption
    assert "mean ± std over 2 seeds" in [t.get_text() for t in ax.get_legend().get_texts()][0]
    plt.close(fig)
    one = tables.plot_rows(tables.summarize(RECORDS[2:3], ROWS), title="t")  # one seed: no ± anywhere
    assert not [c for c in one.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    assert [t.get_text() for t in one.axes[0].get_legend().get_texts()][0] == "ours (mean over 1 seed)"
    tables.stamp(one, "SMOKE TEST: the numbers mean nothing")
    assert "SMOKE TEST: the numbers mean nothing" in [t.get_text() for t in one.texts]
    plt.close(one)


def test_per_kind_columns_and_paper_agreement():
    recs = [{"row": r, "seed": s, "state": "COMPLETE", "JF": jf + s, "J": jf, "F": jf,
             "JF/colour": jf + 10 + s, "JF/multi-object": jf - 10}
            for r, jf in (("a", 20.0), ("b", 40.0), ("c", 30.0)) for s in (0, 1)]
    rows = [{"id": "a", "paper": {"JF": 32.3}}, {"id": "b", "paper": {"JF": 38.9}}, {"id": "c", "paper": {"JF": 50.8}}]
    summary = tables.summarize(recs, rows)
    assert summary["JF/colour_mean"].tolist() == [30.5, 50.5, 40.5]
    assert summary["JF/multi-object_std"].tolist() == [0.0, 0.0, 0.0]
    shown = tables.display_table(summary)
    assert list(shown.columns).index("J&F colour") < list(shown.columns).index("J&F multi-object") < list(shown.columns).index("Paper J&F")
    assert shown["J&F colour"].tolist()[0] == "30.5 ± 0.7"
    # ranks: ours a < c < b, paper a < b < c -> rho = 0.5; span 40.5 - 20.5 = 20.0
    assert tables.paper_agreement(summary) == ("Spearman ρ between our row means and the paper's J&F: 0.50 over 3 rows; "
                                               "our rows span 20.0 J&F points.")
    assert "J&F colour" not in tables.display_table(tables.summarize([{k: v for k, v in r.items() if "/" not in k} for r in recs], rows))


# ----------------------------------------------------------------------------- deltas against a reference row

def expressions(j_values, f_offset=0.0):
    from rvosflow.metrics.records import ExpressionRecord

    return [ExpressionRecord(video_id=f"v{k}", exp_id="0", kind="colour", frames=17, J=j, F=j + f_offset, TC=0.0,
                             target_area=0.1, empty_frames=0, pred_empty_frames=0, both_empty_frames=0,
                             empty_J=math.nan, empty_F=math.nan) for k, j in enumerate(j_values)]


def scored(row, seed, exprs):
    jf = 100 * sum(e.JF for e in exprs) / len(exprs)
    return {"row": row, "seed": seed, "state": "COMPLETE", "JF": jf, "J": jf, "F": jf, "TC": 1.0 + seed,
            "expressions": exprs}


REF_ROWS = [{"id": "base"}, {"id": "same", "reference": "base"}, {"id": "up", "reference": "base"},
            {"id": "later", "reference": "base"}]


def test_a_row_against_its_reference_delta_ci_and_mark():
    base = [0.2, 0.4, 0.6, 0.5, 0.3]
    recs = [scored("base", s, expressions(base)) for s in (0, 1)]
    recs += [scored("same", s, expressions(base)) for s in (0, 1)]  # identical runs
    recs += [scored("up", 0, expressions([j + 0.1 for j in base]))]  # +10 points on every expression
    recs += [{"row": "later", "seed": 0, "state": "COMPLETE", "JF": 40.0, "J": 40.0, "F": 40.0, "expressions": None}]
    s = tables.summarize(recs, REF_ROWS).set_index("id")
    assert pd.isna(s.loc["base", "delta_JF"]) and pd.isna(s.loc["base", "reference"])
    same = s.loc["same"]
    assert same["delta_JF"] == 0 and same["delta_JF_low"] <= 0 <= same["delta_JF_high"] and not same["significant"]
    up = s.loc["up"]  # hand-computed: every paired difference is exactly +10, so is every resample's mean
    assert up["delta_JF"] == pytest.approx(10.0) and up["delta_JF_low"] == pytest.approx(10.0)
    assert up["delta_JF_high"] == pytest.approx(10.0) and up["significant"]
    assert pd.isna(s.loc["later", "delta_JF"]) and s.loc["later", "delta_note"] == "no per-expression records yet"
    assert s.loc["base", "TC_mean"] == pytest.approx(1.5)
    shown = tables.display_table(s.reset_index()).set_index("ID")
    assert shown.loc["up", "Δ J&F [95% CI]"] == "+10.0 [+10.0, +10.0] *" and shown.loc["up", "Ref"] == "base"
    assert shown.loc["same", "Δ J&F [95% CI]"].endswith("]") and shown.loc["base", "Δ J&F [95% CI]"] == "–"
    assert shown.loc["base", "TC"] == "1.5 ± 0.7" and shown.loc["base", "Ref"] == "–"
    footer = tables.delta_footer(s.reset_index())
    assert footer.endswith("* = the CI excludes 0: up of 2 rows.") and "10,000 resamples, seed 25" in footer
    assert r"$\Delta$ J\&F [95\% CI]" in tables.to_latex(shown.reset_index())
    metrics = tables.agreement(s.reset_index())
    assert metrics["delta_JF/up"] == pytest.approx(10.0) and metrics["significant/up"] == 1.0
    assert metrics["significant/same"] == 0.0 and "delta_JF/later" not in metrics


def test_rows_scored_on_other_expressions_get_no_delta_but_say_why():
    recs = [scored("base", 0, expressions([0.2, 0.4])), scored("up", 0, expressions([0.2, 0.4, 0.6]))]
    line = tables.summarize(recs, REF_ROWS[:3:2]).set_index("id").loc["up"]
    assert pd.isna(line["delta_JF"]) and "row up: expected the expressions of row base" in line["delta_note"]


def test_a_table_without_references_has_no_delta_column():
    shown = tables.display_table(tables.summarize(RECORDS, ROWS))
    assert "Δ J&F [95% CI]" not in shown.columns and tables.delta_footer(tables.summarize(RECORDS, ROWS)) == ""
