"""The pictures logged to MLflow: colours nobody else uses, sizes for the artifact viewer."""

import numpy as np
import torch

from rvosflow.data.synthetic.world import BACKGROUND_COLOURS, COLOURS
from rvosflow.visualize import PRED_COLOUR, TARGET_COLOUR, overlay, overlay_figure, trajectory_figure


def test_overlay_colours_are_not_synthetic_colours_and_land_where_the_masks_are():
    assert not {PRED_COLOUR, TARGET_COLOUR} & {*COLOURS.values(), *BACKGROUND_COLOURS.values()}
    frame = np.zeros((8, 8, 3), np.uint8)
    pred = np.zeros((8, 8), bool)
    pred[1:4, 1:4] = True
    target = np.zeros((8, 8), bool)
    target[4:7, 4:7] = True
    out = overlay(frame, pred, target, factor=2)
    assert out.shape == (16, 16, 3)
    assert tuple(out[2, 2]) == PRED_COLOUR  # the prediction's outline
    assert tuple(out[8, 8]) == TARGET_COLOUR  # the ground truth's outline
    assert tuple(out[0, 15]) == (0, 0, 0)  # elsewhere the frame is untouched


def _item(video: str) -> dict:
    mask = torch.zeros(9, 64, 64, dtype=torch.bool)
    mask[:, 10:30, 10:30] = True
    return {"frames": torch.zeros(9, 64, 64, 3, dtype=torch.uint8), "target": mask, "pred": mask, "caption": "the red shape",
            "video_id": video, "exp_id": "0", "JF": 100.0}


def test_figures_fit_the_artifact_viewer_and_title_each_expression_with_its_score():
    fig = overlay_figure([_item("a"), _item("b"), _item("c")])
    width, height = fig.get_size_inches() * fig.dpi
    assert 600 <= width <= 1200 and height < 1000
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert titles == [f"J&F 100.0   \u201cthe red shape\u201d   ({v}/0)" for v in "abc"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["prediction", "ground truth (outline)"]

    traj = {"times": [0.0, 0.5, 1.0], "pictures": [torch.zeros(64, 64, 3, dtype=torch.uint8)] * 3, "caption": "x",
            "video_id": "a", "exp_id": "0", "frame": torch.zeros(64, 64, 3, dtype=torch.uint8),
            "target": torch.zeros(64, 64, dtype=torch.bool)}
    fig = trajectory_figure(traj)
    assert [ax.get_xlabel() for ax in fig.axes] == ["input frame", "z_t, t = 0.00", "z_t, t = 0.50", "z_t, t = 1.00",
                                                    "ground truth"]
