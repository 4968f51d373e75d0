"""Protocol runners: `python -m experiments.ytvos_protocol`, `python -m experiments.mevis_protocol`
(the stages live in `rvosflow.protocols`, each one a `configs/experiment/` preset)."""
