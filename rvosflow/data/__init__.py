"""Datasets: the synthetic benchmark, the real-format readers and the DataModules."""

from rvosflow.data.datamodules import MevisDataModule, ReferringDataModule

# data.format -> DataModule class (the reader behind it opens the real on-disk layout).
DATAMODULES = {"mevis": MevisDataModule}

__all__ = ["DATAMODULES", "MevisDataModule", "ReferringDataModule"]
