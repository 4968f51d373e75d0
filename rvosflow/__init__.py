"""rvosflow: systematic ablations of flow-matching models for referring video object segmentation."""

__version__ = "0.1.0"
