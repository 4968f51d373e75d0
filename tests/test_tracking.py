"""What a run records, piece by piece (fast, no training): the data sets' digests, the training
curves' means and steps, names of runs and sweep children, links, and when a score is partial."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from mlflow.entities import LoggedModelStatus

from rvosflow.config import compose, resolve
from rvosflow.data.digest import digest, files, profile
from rvosflow.data.formats import MevisSource, RefCOCOSource, RefYTVOSSource
from rvosflow.data.formats.base import first_videos
from rvosflow.sweep.strategy import table_settings
from rvosflow.trainer import TrainCurves
from rvosflow.tracking import ERROR_TAG, child_run_name, client, log_model, partial_eval, run_name, run_url

# ------------------------------------------------------------------------------ data set digests


@pytest.fixture
def mevis_copy(tiny_benchmark, tmp_path):
    """A copy of the tiny benchmark's MeViS valid_u (times kept, as ``cp -a``) to change."""
    return shutil.copytree(tiny_benchmark / "mevis" / "valid_u", tmp_path / "valid_u")


def test_the_digest_follows_the_content_of_a_split(tiny_benchmark, mevis_copy):
    original = digest(MevisSource(tiny_benchmark / "mevis" / "valid_u"))
    assert len(original) == 10 and digest(MevisSource(mevis_copy)) == original  # same files, same times
    frame = next((mevis_copy / "JPEGImages").rglob("*.jpg"))
    frame.write_bytes(frame.read_bytes() + b"\0")  # a frame replaced
    changed_frame = digest(MevisSource(mevis_copy))
    assert changed_frame != original
    meta = mevis_copy / "meta_expressions.json"
    videos = json.loads(meta.read_text())
    vid = next(iter(videos["videos"]))
    exp = next(iter(videos["videos"][vid]["expressions"].values()))
    exp["exp"] = exp["exp"] + " again"  # an expression's text
    meta.write_text(json.dumps(videos))
    assert digest(MevisSource(mevis_copy)) not in (original, changed_frame)


def test_a_rewritten_mask_file_or_a_subset_is_another_data_set(tiny_benchmark, mevis_copy):
    source = MevisSource(mevis_copy)
    before = digest(source)
    assert digest(first_videos(source, 1)) != before  # data.eval_videos=1 scores another set
    masks = mevis_copy / "mask_dict.json"
    os.utime(masks, ns=(masks.stat().st_atime_ns, masks.stat().st_mtime_ns + 10**9))  # rewritten, same bytes
    assert digest(MevisSource(mevis_copy)) != before


def test_every_format_names_the_files_its_digest_covers(tiny_benchmark):
    ytvos = RefYTVOSSource(tiny_benchmark / "ref_ytvos", "train")
    read = {p.name for p in ytvos.annotation_files()}
    assert {"meta_expressions.json", "meta.json"} <= read and any(n.endswith(".png") for n in read)  # per-frame masks
    coco = RefCOCOSource(tiny_benchmark / "refcoco", "refcoco", "train")
    assert [p.name for p in coco.annotation_files()] == ["refs(unc).p", "instances.json"]
    mevis = MevisSource(tiny_benchmark / "mevis" / "valid_u")
    assert all(p.is_file() for p in files(mevis))
    assert profile(mevis) == {"videos": 3, "expressions": len(mevis.expressions), "frames": 27, "has_masks": True}


# ------------------------------------------------------------------------------ training curves


class FakeLogger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, metrics))


def fake_trainer(every: int, accumulate: int = 1):
    return SimpleNamespace(global_step=0, log_every_n_steps=every, accumulate_grad_batches=accumulate,
                           logger=FakeLogger(), strategy=None, sanity_checking=False)


def test_train_loss_is_the_mean_of_each_logging_interval_at_the_optimizer_step():
    trainer = fake_trainer(every=2)
    curves = TrainCurves()
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    curves.on_train_start(trainer, None)
    for step, loss in enumerate([1.0, 3.0, 5.0, 7.0, 11.0], start=1):
        param.grad = torch.tensor([3.0 * step, 4.0 * step])  # L2 norm 5 * step
        curves.on_before_optimizer_step(trainer, None, optimizer)
        trainer.global_step = step
        curves.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, step - 1)
    curves.on_train_end(trainer, None)  # the last, shorter interval
    assert [s for s, _ in trainer.logger.logged] == [2, 4, 5]
    assert [m["train/loss"] for _, m in trainer.logger.logged] == pytest.approx([2.0, 6.0, 11.0])
    assert [m["train/grad_norm"] for _, m in trainer.logger.logged] == pytest.approx([7.5, 17.5, 25.0])
    assert all(m["train/lr"] == pytest.approx(0.1) for _, m in trainer.logger.logged)


def test_with_gradient_accumulation_the_interval_counts_optimizer_steps_and_the_loss_is_undivided():
    trainer = fake_trainer(every=1, accumulate=2)
    curves = TrainCurves()
    curves.on_train_start(trainer, None)
    for batch, loss in enumerate([2.0, 4.0, 6.0, 8.0]):  # Lightning hands loss / accumulate_grad_batches
        trainer.global_step = (batch + 1) // 2
        curves.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss / 2)}, None, batch)
    assert [(s, m["train/loss"]) for s, m in trainer.logger.logged] == [(1, pytest.approx(3.0)), (2, pytest.approx(7.0))]


# ------------------------------------------------------------------------------ names, links, partial scores

FINAL = ["+paradigm=video2mask", "bbs.p=0.5", "spa.enabled=true", "dvi.enabled=true"]


def test_a_sweep_child_is_named_by_its_row_and_what_its_configuration_alone_is_called():
    cfg = resolve(compose(FINAL))
    assert run_name(cfg) == "video2mask-p0.5-spa-dvi-s0"
    assert child_run_name("h", table_settings(cfg), 0) == "h-video2mask-p0.5-spa-dvi-s0"
    # an axis the paradigm does not take is off, and not in the name
    mask = resolve(compose(["+paradigm=onestep_mask"]))
    assert child_run_name("b", table_settings(mask), 1) == f"b-{run_name(mask)[:-3]}-s1" == "b-onestep_mask-s1"


def test_links_point_at_the_ui_in_use():
    assert run_url("sqlite:////x/mlflow.db", "1", "abc").startswith("http://127.0.0.1:5000/#/experiments/1/runs/abc?")
    assert run_url("http://server:5001/", "1", "abc").startswith("http://server:5001/#/")
    assert run_url("sqlite:////x/mlflow.db", "1", "abc", "http://127.0.0.1:5055/").startswith("http://127.0.0.1:5055/#/")
    cfg = resolve(compose(["logger.ui_url=http://127.0.0.1:5055"]))
    assert cfg.logger.ui_url == "http://127.0.0.1:5055"


@pytest.mark.parametrize("override, why", [
    (None, None),
    ("trainer.limit_val_batches=1", "trainer.limit_val_batches=1"),  # the int 1 is one batch (the smoke profile's)
    ("trainer.limit_val_batches=1.0", None),                          # the float 1.0 is all of them
    ("trainer.limit_val_batches=0.25", "trainer.limit_val_batches=0.25"),
    ("data.eval_videos=2", "data.eval_videos=2"),
])
def test_partial_eval_says_when_the_final_score_does_not_cover_the_split(override, why):
    cfg = resolve(compose([override] if override else []))
    assert partial_eval(cfg) == why


# ------------------------------------------------------------------------------ the logged model


@pytest.fixture
def store(tmp_path):
    mlflow_client = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow_client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    return mlflow_client, exp, mlflow_client.create_run(exp).info.run_id


def test_a_sharded_checkpoint_folder_is_logged_whole_and_a_failed_upload_says_so(store, tmp_path, monkeypatch):
    mlflow_client, exp, run_id = store
    folder = tmp_path / "last.ckpt"  # FSDP's state_dict_type=sharded writes a folder
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(b"x" * 100)
    (folder / ".metadata").write_bytes(b"m")
    model_id = log_model(mlflow_client, run_id, exp, "m", {"last.ckpt": folder}, True, {"bbs.p": 0.5}, 3)
    model = mlflow_client.get_logged_model(model_id)
    assert model.status == LoggedModelStatus.READY and model.params == {"bbs.p": "0.5"}
    logged = {a.path for a in mlflow_client.list_logged_model_artifacts(model_id, "last.ckpt")}
    assert logged == {"last.ckpt/__0_0.distcp", "last.ckpt/.metadata"}
    assert [(o.model_id, o.step) for o in mlflow_client.get_run(run_id).outputs.model_outputs] == [(model_id, 3)]

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mlflow_client, "log_model_artifacts", refuse)
    failed = mlflow_client.get_logged_model(log_model(mlflow_client, run_id, exp, "m2", {"last.ckpt": folder}, True, {}, 4))
    assert failed.status == LoggedModelStatus.FAILED and failed.tags[ERROR_TAG] == "disk full"  # the run goes on
    assert len(mlflow_client.get_run(run_id).outputs.model_outputs) == 1
