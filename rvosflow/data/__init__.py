"""Datasets: the synthetic benchmark (`rvosflow.data.synthetic`), the real-format readers
(`rvosflow.data.formats`) and the DataModules (`rvosflow.data.datamodules`).

Kept free of imports so the data CLI starts without loading Lightning."""
