"""Model fixtures: tiny Wan bundles for tests."""

from __future__ import annotations

import pytest

FIXTURE_VOCAB = [
    "the red green blue yellow purple orange white circle square triangle ring shape object",
    "moving left right up down stops starts bigger smaller largest smallest first last two of",
    "a an and on over background with striped dotted plain scene",
]


def fixture_vocab() -> list[str]:
    """The synthetic benchmark's vocabulary when it is importable, else a small fixed one."""
    try:
        from rvosflow.data.synthetic import vocabulary

        return list(vocabulary()) + FIXTURE_VOCAB
    except Exception:  # the data package may not provide it (yet)
        return list(FIXTURE_VOCAB)


@pytest.fixture(scope="session")
def test_bundle_dir(tmp_path_factory):
    """A randomly initialised TEST-size Wan bundle saved in the diffusers layout (once per session)."""
    from rvosflow.models.loader import save_wan_bundle
    from rvosflow.models.tiny import build_random_bundle

    path = tmp_path_factory.mktemp("wan") / "test-wan"
    save_wan_bundle(build_random_bundle("test", fixture_vocab(), seed=0), path)
    return path


@pytest.fixture(scope="session")
def test_bundle(test_bundle_dir):
    """``test_bundle_dir`` loaded with ``load_wan_bundle`` (float32, eval mode). Do not mutate."""
    from rvosflow.models.loader import load_wan_bundle

    return load_wan_bundle(test_bundle_dir)
