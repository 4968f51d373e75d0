"""Issue 13's cases: bad input is one line naming the file or key, before any work; data is
checked at setup with every problem reported together; a run that fails after its MLflow run
exists ends FAILED with the error as a tag. (The config-key cases are in test_config.py, the
sweep's in test_sweep.py.)"""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from settings import tiny_run

from rvosflow.config import compose
from rvosflow.data.check import check_sources, find_problems
from rvosflow.data.formats import DatasetFormatError, MevisSource
from rvosflow.errors import ConfigError, UserError, report
from rvosflow.train import run


@pytest.fixture
def bench(tiny_benchmark, tmp_path):
    """A private copy of the tiny benchmark to corrupt."""
    return shutil.copytree(tiny_benchmark, tmp_path / "b")


def mlflow_runs(uri):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("rvosflow")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def one_line(exc, capsys) -> str:
    capsys.readouterr()
    assert report(exc) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def frames_of(split_dir, video=None):
    meta = json.loads((split_dir / "meta_expressions.json").read_text())["videos"]
    vid = video or sorted(meta)[0]
    return vid, [split_dir / "JPEGImages" / vid / f"{n}.jpg" for n in meta[vid]["frames"]]


def test_valid_u_problems_are_found_together_before_training(bench, test_bundle_dir, tmp_path, capsys):
    # Found late before: each of these surfaced only at the first validation, after training,
    # one at a time, with no checkpoint written.
    valid = bench / "mevis" / "valid_u"
    vid, paths = frames_of(valid)
    paths[0].unlink()                                   # missing
    paths[1].write_bytes(b"")                           # zero bytes
    paths[2].write_bytes(b"this is not a JPEG")         # garbage
    masks = json.loads((valid / "mask_dict.json").read_text())
    anno = next(a for a, rles in masks.items() if any(rles))
    t = next(i for i, r in enumerate(masks[anno]) if r)
    masks[anno][t]["size"] = [16, 16]                   # an RLE of the wrong size
    (valid / "mask_dict.json").write_text(json.dumps(masks))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(DatasetFormatError) as err:
        run(compose(tiny_run(bench, test_bundle_dir, uri)), tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith("data: expected every split to hold expressions and every file it references complete "
                          "and at its video's size, found 4 problem(s): ")
    for p in (paths[0], paths[1], paths[2]):
        assert str(p) in msg
    assert "found nothing" in msg and "found an empty file" in msg and "found an undecodable file" in msg
    assert f"anno_id '{anno}'" in msg and "expected an RLE of size [32, 32] (the frame's), found [16, 16]" in msg
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()  # before any work
    one_line(err.value, capsys)


def test_problems_are_capped_with_a_count(bench):
    valid = bench / "mevis" / "valid_u"
    for p in sorted((valid / "JPEGImages").rglob("*.jpg"))[:9]:
        p.write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"found 9 problem\(s\): .*; and 4 more$"):
        check_sources([MevisSource(valid)], limit=5)
    assert find_problems([MevisSource(bench / "mevis" / "train")]) == []


def test_a_frame_at_another_size_is_named_at_setup_and_when_loading(bench):
    # Before: NumPy's "all input arrays must have the same shape", naming nothing.
    valid = bench / "mevis" / "valid_u"
    vid, paths = frames_of(valid)
    Image.new("RGB", (48, 32)).save(paths[3])
    (problem,) = find_problems([MevisSource(valid)])
    assert problem == f"{paths[3]}: expected 32x32 like {paths[0].name}, found 48x32"
    with pytest.raises(DatasetFormatError, match=rf"{paths[3]}: expected 32x32 like .*, found 48x32"):
        MevisSource(valid).load_frames(vid)


def test_garbage_rle_counts_name_the_file_and_entry(bench, capsys):
    # Before: pycocotools' "Invalid RLE mask representation", naming no file.
    valid = bench / "mevis" / "valid_u"
    masks = json.loads((valid / "mask_dict.json").read_text())
    anno = next(a for a, rles in masks.items() if any(rles))
    t = next(i for i, r in enumerate(masks[anno]) if r)
    masks[anno][t]["counts"] = "garbage!!"
    (valid / "mask_dict.json").write_text(json.dumps(masks))
    src = MevisSource(valid)
    expr = next(e for e in src.expressions if anno in src._annos[(e.video_id, e.exp_id)])
    with pytest.raises(DatasetFormatError) as err:
        src.load_target(expr)
    assert f"mask_dict.json: anno_id '{anno}'" in str(err.value) and "found 'garbage!!', not RLE" in str(err.value)
    one_line(err.value, capsys)


def test_a_text_file_as_checkpoint_is_named(tmp_path, capsys):
    # Before: torch.load's "IndexError: pop from empty list".
    from rvosflow.config import resolve

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ConfigError, match=rf"^ckpt_path: {text}: expected a Lightning checkpoint \(a torch.save file\), found another kind of file"):
        resolve(compose([f"ckpt_path={text}"]))
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(ConfigError, match=rf"^ckpt_path: {truncated}: expected a Lightning checkpoint"):
        resolve(compose([f"ckpt_path={truncated}"]))
    with pytest.raises(ConfigError, match=rf"^init_from: {text}: expected a Lightning checkpoint"):
        resolve(compose([f"init_from={text}"]))
    with pytest.raises(ConfigError) as err:
        run(compose([f"ckpt_path={text}", "mode=validate"]), tmp_path / "run")
    one_line(err.value, capsys)


def test_a_bundle_whose_config_has_other_sizes_is_named(test_bundle_dir, tmp_path, capsys):
    # Before: diffusers' low_cpu_mem_usage hint, with no path.
    from rvosflow.models.loader import BundleError, load_wan_bundle

    d = shutil.copytree(test_bundle_dir, tmp_path / "bundle")
    cfg_path = d / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["ffn_dim"] = int(cfg["ffn_dim"]) * 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError) as err:
        load_wan_bundle(d, components=("transformer",))
    assert str(err.value).startswith(f"{d / 'transformer'}: expected weights that fit its config.json, found")
    one_line(err.value, capsys)


def test_evaluate_names_a_frame_at_another_size(tiny_benchmark, tmp_path, capsys):
    # Before: NumPy's "all input arrays must have the same shape" in rvosflow.evaluate too.
    from rvosflow import evaluate

    src = MevisSource(tiny_benchmark / "mevis" / "valid_u")
    preds = tmp_path / "preds"
    for e in src.expressions:
        d = preds / e.video_id / e.exp_id
        d.mkdir(parents=True)
        for n in e.frame_names:
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(d / f"{n}.png")
    e = src.expressions[0]
    bad = preds / e.video_id / e.exp_id / f"{e.frame_names[2]}.png"
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(bad)
    argv = ["--benchmark", "mevis", "--root", str(tiny_benchmark / "mevis"), "--split", "valid_u",
            "--predictions", str(preds), "--out", str(tmp_path / "s.json")]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: expected 32x32 like ") and err.endswith("found 48x32\n") and err.count("\n") == 1


def test_the_noisy_cases_are_one_line(bench, capsys):
    # Before: the right message as the last line of a 12-88-line traceback.
    with pytest.raises(DatasetFormatError) as missing:
        MevisSource(bench / "mevis" / "nope")
    one_line(missing.value, capsys)
    meta = bench / "mevis" / "valid_u" / "meta_expressions.json"
    meta.write_text(meta.read_text()[:-10])
    with pytest.raises(DatasetFormatError) as malformed:
        MevisSource(bench / "mevis" / "valid_u")
    assert "meta_expressions.json: malformed JSON" in one_line(malformed.value, capsys)
    train = bench / "mevis" / "train"
    m = json.loads((train / "meta_expressions.json").read_text())
    vid = sorted(m["videos"])[0]
    exp = next(iter(m["videos"][vid]["expressions"].values()))
    exp["anno_id"] = [99999] * len(exp["anno_id"])
    (train / "meta_expressions.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError) as anno:
        MevisSource(train)
    assert "anno_id '99999'" in one_line(anno.value, capsys)


def test_a_failure_after_the_mlflow_run_started_marks_it_failed(tiny_benchmark, test_bundle_dir, tmp_path):
    # Before: failures outside Lightning left their MLflow runs RUNNING (7 seen).
    from lightning.pytorch.callbacks import Callback

    class Boom(Callback):
        def setup(self, trainer, module, stage):
            raise RuntimeError("boom at setup")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError, match="boom"):  # inside Lightning's fit
        run(compose(tiny_run(tiny_benchmark, test_bundle_dir, uri)), tmp_path / "run", callbacks=[Boom()])
    # outside it: the Trainer cannot be built (a valid accelerator this machine does not have)
    with pytest.raises(Exception, match="(?i)mps"):
        run(compose(tiny_run(tiny_benchmark, test_bundle_dir, uri, "trainer.accelerator=mps")), tmp_path / "run2")
    runs = {r.data.params.get("trainer.accelerator"): r for r in mlflow_runs(uri)}
    assert runs["auto"].info.status == "FAILED" and "RuntimeError: boom at setup" in runs["auto"].data.tags["rvosflow.error"]
    assert runs["mps"].info.status == "FAILED" and "mps" in runs["mps"].data.tags["rvosflow.error"].lower()


def test_synthetic_and_pretrain_clis_are_one_line(tmp_path, capsys):
    from rvosflow.data.synthetic.__main__ import main as synthetic_main
    from rvosflow.pretrain import main as pretrain_main

    assert synthetic_main(["--out", str(tmp_path / "s"), "--height", "0", "--quiet"]) == 2
    assert capsys.readouterr().err == "error: height: expected an integer >= 16, got 0\n"
    assert pretrain_main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "expected a MeViS-layout split" in err and str(tmp_path / "none") in err


def test_library_errors_that_are_not_user_errors_keep_their_traceback():
    with pytest.raises(KeyError):
        report(KeyError("a bug"))
    assert isinstance(ConfigError("x"), UserError) and isinstance(DatasetFormatError("x"), UserError)
