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


def tiny_run(root, bundle_dir, tracking_uri: str, *extra) -> list[str]:
    """``run.py`` overrides of a two-step run on the tiny benchmark at ``root`` (32x32, 9 frames),
    with no caches and no overlays, logging to ``tracking_uri``; ``extra`` last."""
    return [f"data.root={root / 'mevis'}", "data.height=32", "data.max_width=32", "data.num_frames=9",
            "data.batch_size=2", "data.val_limit=3", f"model.path={bundle_dir}", "text.max_length=16",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
            f"logger.tracking_uri={tracking_uri}", "num_overlays=0", "latent_cache_dir=null", "text_cache_dir=null",
            *extra]
