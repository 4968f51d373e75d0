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
    from rvosflow.train import run, summary

    try:
        results = run(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary(results))
    return results.get("JF") or 0.0


if __name__ == "__main__":
    main()
