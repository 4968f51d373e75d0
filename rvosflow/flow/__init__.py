"""Flow-matching numerics in the paper's time (t=0 start, t=1 mask), independent of Lightning."""

from rvosflow.flow.schedule import (
    euler_integrate,
    from_dit_velocity,
    inference_times,
    interpolate,
    sample_bbs_times,
    shift_sigma,
    to_dit_velocity,
    to_wan_timestep,
    wan_velocity_factor,
)

__all__ = [
    "euler_integrate",
    "from_dit_velocity",
    "inference_times",
    "interpolate",
    "sample_bbs_times",
    "shift_sigma",
    "to_dit_velocity",
    "to_wan_timestep",
    "wan_velocity_factor",
]
