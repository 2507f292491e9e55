"""COCO person-keypoints and COCO-WholeBody annotation files from rendered samples.

Both files share images and annotation ids; the keypoints file holds the 17 body points, the
whole-body file adds ``foot_kpts``, ``face_kpts``, ``lefthand_kpts``, ``righthand_kpts``, their
boxes and ``*_valid`` flags as COCO-WholeBody does. Numbers are rounded to 0.01 px so that the
same sample always writes the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from posegraph.skeletons import coco17

from .body import FACE0, FOOT0, LHAND0, RHAND0
from .scene import Sample


def person_category() -> dict:
    """The COCO ``person`` category with coco17 keypoint names and 1-based skeleton."""
    return {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(coco17.keypoint_names),
        "skeleton": [[a + 1, b + 1] for a, b in coco17.limbs],
    }


def _flat(kp: np.ndarray) -> list:
    """(M, 3) keypoints -> COCO's flat [x1, y1, v1, ...] with rounded coordinates."""
    out = np.round(kp.astype(np.float64), 2)
    out[:, 2] = np.round(out[:, 2])
    return [v if i % 3 != 2 else int(v) for i, v in enumerate(out.reshape(-1).tolist())]


def _box(b: np.ndarray) -> list:
    return [round(float(v), 2) for v in b]


@dataclass
class CocoBuilder:
    """Accumulates images and their people; ``keypoints_json`` / ``wholebody_json`` give the
    two annotation files as dictionaries."""

    images: list[dict] = field(default_factory=list)
    body: list[dict] = field(default_factory=list)
    wholebody: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def add(self, sample: Sample, file_name: str, frame_index: int | None = None) -> int:
        """Record one image and its people; returns the image id (1-based)."""
        image_id = len(self.images) + 1
        h, w = sample.image.shape[:2]
        image = {"id": image_id, "file_name": file_name, "width": w, "height": h}
        if frame_index is not None:
            image["frame_index"] = frame_index
        self.images.append(image)
        for n in range(len(sample)):
            kp = sample.keypoints[n]
            rle = mask_utils.encode(np.asfortranarray(sample.instance_map == n + 1, np.uint8))
            ann = {
                "id": len(self.body) + 1,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": _box(sample.boxes[n]),
                "area": float(sample.areas[n]),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "num_keypoints": int((kp[:17, 2] > 0).sum()),
                "keypoints": _flat(kp[:17]),
            }
            if sample.track_ids[n] >= 0:
                ann["track_id"] = int(sample.track_ids[n])
            self.body.append(ann)
            whole = dict(ann)
            whole.update(
                foot_kpts=_flat(kp[FOOT0 : FOOT0 + 6]),
                face_kpts=_flat(kp[FACE0 : FACE0 + 68]),
                lefthand_kpts=_flat(kp[LHAND0 : LHAND0 + 21]),
                righthand_kpts=_flat(kp[RHAND0 : RHAND0 + 21]),
                face_box=_box(sample.face_boxes[n]),
                lefthand_box=_box(sample.lefthand_boxes[n]),
                righthand_box=_box(sample.righthand_boxes[n]),
                face_valid=bool(sample.face_valid[n]),
                lefthand_valid=bool(sample.lefthand_valid[n]),
                righthand_valid=bool(sample.righthand_valid[n]),
                foot_valid=bool(sample.foot_valid[n]),
            )
            self.wholebody.append(whole)
        return image_id

    def _doc(self, annotations: list[dict]) -> dict:
        return {
            "info": self.info,
            "licenses": [],
            "images": self.images,
            "annotations": annotations,
            "categories": [person_category()],
        }

    def keypoints_json(self) -> dict:
        return self._doc(self.body)

    def wholebody_json(self) -> dict:
        return self._doc(self.wholebody)


def write_json(doc: dict, path: Path) -> None:
    """Write compactly and deterministically (sorted keys are not needed: insertion order is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")))
