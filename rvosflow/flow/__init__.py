"""Flow-matching numerics in the paper's time (t=0 start, t=1 mask), independent of Lightning."""

from rvosflow.flow.schedule import (
    euler_integrate,
    inference_times,
    interpolate,
    sample_bbs_times,
    shift_sigma,
    to_wan_timestep,
)

__all__ = [
    "euler_integrate",
    "inference_times",
    "interpolate",
    "sample_bbs_times",
    "shift_sigma",
    "to_wan_timestep",
]
