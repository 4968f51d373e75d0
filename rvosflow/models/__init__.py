"""Wan2.1 bundles (tiny or real): loading/saving, tiny configs, encoding conventions, pretraining."""

from rvosflow.models.loader import (
    COMPONENTS,
    BundleError,
    WanBundle,
    check_bundle,
    is_complete_bundle,
    load_wan_bundle,
    resolve_dtype,
    save_wan_bundle,
)
from rvosflow.models.tiny import TEST, TINY, build_random_bundle, build_tokenizer

__all__ = [
    "COMPONENTS", "BundleError", "WanBundle", "check_bundle", "is_complete_bundle", "load_wan_bundle",
    "resolve_dtype", "save_wan_bundle", "TEST", "TINY", "build_random_bundle", "build_tokenizer",
]
