"""Table 3 (experiments.table3): the spec file and profiles, the written tables with the paper's
values, and (slow) the whole pipeline on the tiny benchmark and a TEST-size bundle."""


import pandas as pd
import pytest

from experiments.table3 import Table3Error, load_spec, run_table3, write_tables
from rvosflow.config import compose
from rvosflow.config import resolve as validate
from rvosflow.paths import PROJECT_ROOT

SPEC = PROJECT_ROOT / "sweeps" / "table3.yaml"


@pytest.mark.parametrize("profile", ["default", "smoke", "gpu"])
def test_every_profile_composes_and_validates(profile):
    spec, prof = load_spec(SPEC, profile)
    for stage in ("flow", "decoder"):
        validate(compose([*prof["overrides"], *prof[stage]]))
    assert [r["paper"] for r in spec["rows"]] == [{"Recon": 98.8, "Perf": 60.0}, {"Recon": 99.1, "Perf": 60.9}]


def test_bad_profile_and_keys_are_named(tmp_path):
    with pytest.raises(Table3Error, match="allowed: default, smoke, gpu"):
        load_spec(SPEC, "fast")
    bad = tmp_path / "t.yaml"
    bad.write_text(SPEC.read_text().replace("recon_limit: 8", "recon_limt: 8"))
    with pytest.raises(Table3Error, match="recon_limt"):
        load_spec(bad, "smoke")


def test_tables_carry_ours_and_the_papers_values(tmp_path):
    spec, _ = load_spec(SPEC, "smoke")
    results = {"recon": {"frozen": {"JF": 96.5, "J": 96.0, "F": 97.0}, "tuned": {"JF": 97.1, "J": 97.0, "F": 97.2}},
               "perf_frozen": {"JF": 53.9, "J": 55.6, "F": 52.3}, "perf_tuned": {"JF": 54.2, "J": 55.0, "F": 53.4},
               "seconds": {"flow": 1.0, "total": 2.0}}
    files = write_tables(spec, "smoke", results, tmp_path)
    assert {p.name for p in files.values()} == {f"table3-smoke.{e}" for e in ("md", "csv", "tex", "json")}
    md = files["md"].read_text()
    for value in ("98.8", "60.0", "99.1", "60.9", "96.5", "97.1", "53.9", "54.2"):
        assert value in md and value in files["tex"].read_text()
    csv = pd.read_csv(files["csv"])
    assert csv["paper_perf"].tolist() == [60.0, 60.9] and csv["recon_JF"].tolist() == [96.5, 97.1]


@pytest.mark.slow
def test_pipeline_end_to_end(tiny_benchmark, test_bundle_dir, tmp_path):
    from test_run import tiny_overrides

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    extra = tiny_overrides(tiny_benchmark, test_bundle_dir, uri)
    results = run_table3("smoke", SPEC, tmp_path / "results", tmp_path / "work", extra)
    for row in ("frozen", "tuned"):
        assert 0 <= results["recon"][row]["JF"] <= 100 and 0 <= results[f"perf_{row}"]["JF"] <= 100
    assert (tmp_path / "results" / "table3-smoke.tex").is_file()
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rvosflow").experiment_id])
    parent = [r for r in runs if r.info.run_name == "table3-smoke"][0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and parent.info.status == "FINISHED"
