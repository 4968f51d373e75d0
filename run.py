"""One ablation configuration: `python run.py [+paradigm=NAME] [key=value ...]` (Hydra).

Without `+paradigm=` it trains and scores the paper's final model on the embedded default.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rvosflow.config import ConfigError


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from rvosflow.train import run

    try:
        results = run(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if "predictions" in results:
        print(f"{results['expressions']} expressions -> {results['predictions']}  (MLflow run {results['mlflow_run_id']})")
        return 0.0
    if results["JF"] is None:  # a server-scored validation split: no local score
        print(f"trained -> {results['checkpoint']}  (MLflow run {results['mlflow_run_id']})")
        return 0.0
    print(f"J&F {results['JF']:.1f}  J {results['J']:.1f}  F {results['F']:.1f}  (MLflow run {results['mlflow_run_id']})")
    return results["JF"]


if __name__ == "__main__":
    main()
