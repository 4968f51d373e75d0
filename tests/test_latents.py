"""The frozen-encoder cache: misses encoded together, entries persisted and shared on disk."""

import torch

from rvosflow.latents import LatentCache, file_identity, fingerprint


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
