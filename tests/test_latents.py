"""The frozen-encoder cache: misses encoded together, entries persisted and shared on disk."""

import torch

from rvosflow.caches import LatentCache, content_key, file_identity, fingerprint


def encoder(calls):
    def compute(positions):
        calls.append(list(positions))
        return [(torch.full((2,), float(p)), torch.ones(1)) for p in positions]
    return compute


def test_misses_are_encoded_once_and_in_one_batch(tmp_path):
    calls = []
    cache = LatentCache(tmp_path)
    first = cache.get_many(["a", "b", "c"], encoder(calls))
    assert calls == [[0, 1, 2]] and [e[0][0].item() for e in first] == [0, 1, 2]
    again = cache.get_many(["c", "d", "a"], encoder(calls))
    assert calls[-1] == [1]  # only "d" was missing
    assert [e[0][0].item() for e in again] == [2, 1, 0]


def test_entries_persist_across_instances_and_ignore_torn_files(tmp_path):
    LatentCache(tmp_path).get_many(["a", "b"], encoder([]))
    calls = []
    assert [e[0][0].item() for e in LatentCache(tmp_path).get_many(["a", "b"], encoder(calls))] == [0, 1]
    assert calls == []
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"torn")
    calls = []
    LatentCache(tmp_path).get_many(["a"], encoder(calls))
    assert calls == [[0]]
    assert not list(tmp_path.glob("*.tmp"))


def test_disabled_cache_always_encodes():
    calls = []
    cache = LatentCache(None, enabled=False)
    cache.get_many(["a"], encoder(calls))
    cache.get_many(["a"], encoder(calls))
    assert calls == [[0], [0]] and len(cache) == 0


def test_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"1")
    before = fingerprint(file_identity(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"22")
    assert fingerprint(file_identity(tmp_path)) != before


def test_content_key_follows_the_pixels():
    a = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    b = a.clone()
    b[1, 2, 3, 0] = 1
    assert content_key(a) == content_key(a.clone()) != content_key(b)
    assert content_key(a) != content_key(a.reshape(4, 2, 4, 3))  # shape is part of the key
    assert content_key(a.bool()) != content_key(a)  # and so is the dtype


def test_blackened_frames_are_encoded_again(tiny_benchmark, test_bundle_dir, tmp_path):
    # The case: after a cached run, blackening a valid_u video's JPEGs left J&F at the
    # old value (the cache was keyed by video id and frame indices); without the cache it moved.
    import shutil

    from PIL import Image

    from rvosflow.config import compose
    from rvosflow.train import run

    root = tmp_path / "mevis"
    shutil.copytree(tiny_benchmark / "mevis", root)
    base = [
        f"data.root={root}", "data.height=32", "data.max_width=32", "data.num_frames=9",
        f"model.path={test_bundle_dir}", "text.max_length=16", "mode=validate",
        "+paradigm=video2mask", "trainer.enable_progress_bar=false", "num_overlays=0",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    cached = [*base, f"latent_cache_dir={tmp_path / 'cache'}"]
    run(compose(cached), tmp_path / "warm")
    entries = set((tmp_path / "cache").rglob("*.pt"))
    assert entries

    split = root / "valid_u" / "JPEGImages"
    video = sorted(split.iterdir())[0]
    for jpg in video.glob("*.jpg"):
        Image.new("RGB", Image.open(jpg).size).save(jpg)
    after = run(compose(cached), tmp_path / "after")
    new_entries = set((tmp_path / "cache").rglob("*.pt")) - entries
    assert new_entries, "the blackened video was not encoded again"
    fresh = run(compose([*base, "cache_latents=false"]), tmp_path / "fresh")
    assert after["JF"] == fresh["JF"] and after["J"] == fresh["J"]


def test_an_entry_file_holds_its_own_latent_not_the_whole_batch(tmp_path):
    # Found by the release-clips work: entries were views of the batch tensor, so every file
    # saved the whole batch's storage (1.97 MB for a 164 KB latent).
    batch = torch.randn(8, 16, 5, 8, 8)
    cache = LatentCache(tmp_path)
    cache.get_many(list("abcdefgh"), lambda positions: [(batch[p], batch[p, :1]) for p in positions])
    one_latent = batch[0].numel() * batch.element_size()
    sizes = [p.stat().st_size for p in tmp_path.glob("*.pt")]
    assert len(sizes) == 8 and max(sizes) < 1.5 * one_latent
