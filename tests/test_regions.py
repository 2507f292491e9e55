"""filter.region: people kept or left out by where they stand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nodes.regions import RegionFilter, inside
from posegraph.node import NodeError
from posegraph.packet import Detections, Frame, Poses
from tests.conftest import write_pipeline


def test_inside_agrees_with_opencv_on_a_concave_polygon():
    polygon = np.array([[10, 10], [90, 10], [90, 90], [50, 40], [10, 90]], np.float64)
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (2000, 2))
    ours = inside(points, polygon)
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    theirs = np.array(
        [cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in points]
    )
    clear = np.abs(theirs) > 1e-6  # points on an edge may fall either way
    assert (ours[clear] == (theirs[clear] > 0)).all()
    assert 0.3 < ours.mean() < 0.7


def _frame(stream: str, boxes: list[list[float]]) -> Frame:
    n = len(boxes)
    return Frame(
        stream=stream,
        index=0,
        pts=0.0,
        captured_at=0.0,
        image=np.zeros((100, 200, 3), np.uint8),
        detections=Detections(np.array(boxes, np.float32), np.ones(n), np.zeros(n)),
        poses=Poses(
            keypoints=np.zeros((n, 17, 2)),
            scores=np.ones((n, 17)),
            boxes=np.array(boxes, np.float32),
            instance_scores=np.ones(n),
            track_ids=np.arange(n) + 10,
            skeleton="coco17",
        ),
    )


def test_people_are_kept_by_where_they_stand_per_stream():
    # the lower half of every picture; on cam2 a corner of it left out (a screen, say)
    node = RegionFilter(
        include=[[[0, 0.5], [1, 0.5], [1, 1], [0, 1]]],
        exclude={"cam2": [[[0.75, 0.5], [1, 0.5], [1, 1], [0.75, 1]]]},
    )
    boxes = [
        [10, 20, 30, 80],  # stands at (20, 80): lower half
        [10, 5, 30, 45],  # stands at (20, 45): upper half
        [160, 40, 180, 90],  # stands at (170, 90): lower half, in cam2's corner
    ]
    for stream, kept in (("cam1", [10, 12]), ("cam2", [10])):
        out = node.process(_frame(stream, boxes))
        assert out.poses.track_ids.tolist() == kept, stream
        assert out.detections.xyxy.tolist() == [boxes[k - 10] for k in kept]
        assert out.poses.skeleton == "coco17" and out.poses.keypoints.shape[1:] == (17, 2)
    # by the centre instead, in pixels: (20, 50) is on the line, (170, 65) below it
    node = RegionFilter(
        include=[[[0, 52], [200, 52], [200, 100], [0, 100]]], relative=False, point="center"
    )
    assert node.process(_frame("cam1", boxes)).poses.track_ids.tolist() == [12]


def test_crops_follow_their_people():
    """Between crop.topdown and the pose node: the crops of people left out go too, and
    the others point at their new detection rows."""
    from nodes.crop import TopDownCrop

    boxes = [[10, 5, 30, 45], [10, 20, 30, 80], [160, 40, 180, 90], [100, 60, 120, 99]]
    frame = _frame("cam1", boxes)
    frame.detections.scores[:] = [0.9, 0.8, 0.95, 0.5]
    crop = TopDownCrop(model="hrnet_w16_128x96", images=True)
    crop.setup(None)
    cropped = crop.process(frame)
    node = RegionFilter(include=[[[0, 0.5], [0.6, 0.5], [0.6, 1], [0, 1]]])  # lower left
    out = node.process(cropped)
    assert out.detections.xyxy.tolist() == [boxes[1], boxes[3]]
    crops, before = out.meta["crops"], cropped.meta["crops"]
    assert before["detection"].tolist() == [2, 0, 1, 3]  # by score
    assert crops["detection"].tolist() == [0, 1]  # boxes 1 and 3, now rows 0 and 1
    for key in ("affine", "inverse", "center", "scale", "images"):
        assert np.array_equal(crops[key], before[key][[2, 3]]), key
    assert crops["input_size"] == before["input_size"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "give include or exclude polygons"),
        ({"include": [[[0, 0], [1, 1]]]}, "include: polygon 0 must be at least 3 [x, y] points"),
        ({"include": [[[0, 0], [640, 0], [640, 480]]]}, "has points outside 0-1"),
        ({"exclude": {"cam": "left half"}}, "exclude[cam]: give a list of polygons"),
    ],
)
def test_bad_regions_say_what_to_give(settings, message):
    with pytest.raises(NodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RegionFilter(**settings)


def test_a_bad_region_is_found_before_anything_starts(tmp_path, posegraph):
    """By validate, and by run before any process starts: with the file and line."""
    write_pipeline(
        tmp_path / "p.yaml",
        [
            {"name": "cam", "type": "source.synthetic", "with": {"width": 32, "height": 32}},
            {
                "name": "zone",
                "type": "filter.region",
                "from": "cam",
                "with": {"include": [[[0, 0.5], [1, 0.5]]]},
            },
            {"name": "out", "type": "sink.null", "from": "zone"},
        ],
    )
    for command in ("validate", "run"):
        code, _, stderr = posegraph(command, "p.yaml").wait()
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1, stderr
        assert (
            "p.yaml:8: node 'zone' (filter.region): include: polygon 0 must be at least 3"
            in (lines[0])
        )


def test_the_regions_go_with_the_frame_and_the_overlay_outlines_them():
    from nodes.overlay import SkeletonOverlay

    node = RegionFilter(
        include=[[[0.1, 0.5], [0.9, 0.5], [0.9, 0.9], [0.1, 0.9]]],
        exclude={"cam1": [[[0.6, 0.6], [0.8, 0.6], [0.8, 0.8]]]},
    )
    out = node.process(_frame("cam1", [[10, 20, 30, 80]]))
    assert out.meta["regions"] == {
        "include": [[[20, 50], [180, 50], [180, 90], [20, 90]]],
        "exclude": [[[120, 60], [160, 60], [160, 80]]],
    }
    assert "exclude" not in node.process(_frame("cam2", [[10, 20, 30, 80]])).meta["regions"]
    overlay = SkeletonOverlay(boxes=False)
    overlay.setup(None)
    drawn = overlay.process(out).image
    green, red = drawn[50, 100], drawn[60, 140]  # on the include's top, the exclude's top
    assert green[1] > 150 and green[2] < 120, green
    assert red[2] > 150 and red[1] < 120, red
    plain = SkeletonOverlay(boxes=False, regions=False)
    plain.setup(None)
    assert not plain.process(out).image[50, 100].any()
