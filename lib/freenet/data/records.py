"""One annotated animal instance (SPEC §3.2)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Record:
    """An annotated instance in the joint order of the set it was loaded or converted into.

    ``visibility`` keeps the COCO value (0 unannotated, 1 occluded, 2 visible; split files write
    0/1). A joint counts as annotated when its visibility is > 0.
    """

    image_path: str
    image_id: int
    ann_id: int
    category_id: int
    box: np.ndarray         # (4,) float32 [x, y, w, h]
    keypoints: np.ndarray   # (J, 2) float32 (x, y) in image pixels
    visibility: np.ndarray  # (J,) float32
    source: str = ""        # dataset the instance comes from ("ap10k", "animalpose", "tigdog", ...)

    @property
    def num_joints(self) -> int:
        return len(self.visibility)
