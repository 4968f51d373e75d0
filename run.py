"""One ablation configuration: `python run.py [+paradigm=NAME] [key=value ...]` (Hydra).

Without `+paradigm=` it trains and scores the paper's final model on the embedded default.
Bad input (an unknown key, a value of the wrong type, a dataset or checkpoint that does not fit)
is one line, `error: <key or file>: <expected>, <found>`, exit 2, before any work;
RVOSFLOW_TRACEBACK=1 shows the traceback. SIGTERM and SIGINT stop it after a checkpoint, exit
143 and 130, and the last line printed is the command that resumes it.
"""

import os
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rvosflow import config as run_config  # registers the schema Hydra composes on
from rvosflow import errors, signals

_user_error: list = []  # a user error from the task, reported by cli() after Hydra returns


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from rvosflow.console import summary
    from rvosflow.train import run  # after Hydra has parsed the command line: `--help` stays quick

    try:
        hydra_cfg = HydraConfig.get()
        results = run(run_config.with_overrides(cfg, hydra_cfg.overrides.task), hydra_cfg.runtime.output_dir)
    except Exception as exc:
        if errors.as_user_error(exc) is None:
            raise
        _user_error.append(exc)  # raised through Hydra it would be prefixed by Hydra's own report
        return float("nan")
    print(summary(results))
    return results.get("JF") or 0.0


def refuse_a_finished_run_dir(argv: list[str]) -> None:
    """Hydra rewrites ``<hydra.run.dir>/.hydra/`` before the task starts, so a folder holding a
    finished run is refused before Hydra runs (``overwrite=true`` allows it)."""
    from rvosflow.train import check_run_dir

    dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if dirs:
        check_run_dir(Path(dirs[-1]), overwrite=any(a.lower() == "overwrite=true" for a in argv))


def cli() -> int:
    from hydra.errors import HydraException

    # Hydra re-raises instead of printing its own multi-line report; errors.report decides.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    signals.install()
    try:
        refuse_a_finished_run_dir(sys.argv[1:])
        main()
        if _user_error:
            return errors.report(_user_error[0])
    except (HydraException, yaml.YAMLError) as exc:  # composition: an unknown key or group option, bad syntax
        return errors.report(run_config.hydra_error(exc, sys.argv[1:]).with_traceback(exc.__traceback__))
    except signals.Stopped as stop:
        print(f"{stop}; " + (f"resume with: {stop.resume}" if stop.resume
                             else "no checkpoint was written yet: rerun the same command"), flush=True)
        return stop.exit_code
    except Exception as exc:  # noqa: BLE001  (report re-raises what is not the user's input)
        return errors.report(exc)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
