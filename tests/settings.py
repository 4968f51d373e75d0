"""Typed run configs for unit tests, without Hydra: the schema's dataclasses with its defaults and
the given settings (dotted keys), as a run receives them (``config.resolve`` would also set the
axes a paradigm does not take to off; these tests name every value they rely on)."""

from rvosflow import schema


def run_config(paradigm: str = "video2mask", settings: dict | None = None) -> schema.RunConfig:
    plain: dict = {"paradigm": {"name": paradigm}, "data": {"format": "mevis", "root": "unused"},
                   "model": {"name": "test", "path": "unused"}, "text": {"max_length": 16}}
    for key, value in (settings or {}).items():
        *parents, last = key.split(".")
        node = plain
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    schema.check(plain)
    return schema.build(plain)


# FlowSettings-style names of the flow's settings, for the paradigm tests.
_KEYS = {"bbs_p": "bbs.p", "bbs_sampler": "bbs.sampler", "spa": "spa.enabled", "dvi": "dvi.enabled",
         "steps": "solver.steps", "shift": "solver.shift", "sigma_min": "solver.sigma_min",
         "round_timesteps": "solver.round_timesteps", "start_at_noise_end": "flow.start_at_noise_end",
         "onestep_timestep": "paradigm.timestep"}


def paradigm(name: str, **flow):
    """The paradigm ``name`` on a config with every toggle off but those given (``bbs_p=0.5, dvi=True``)."""
    from rvosflow.paradigms import build_paradigm

    settings = {"bbs.p": 0.0, "spa.enabled": False, "dvi.enabled": False}
    settings.update({_KEYS[k]: v for k, v in flow.items()})
    return build_paradigm(run_config(name, settings))
