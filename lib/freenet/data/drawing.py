"""Contact sheets: ground truth (or predictions) drawn on crops of a COCO keypoint file's images.

    sheet, tiles = draw_contact_sheet("my_val.json", ["my_images/"], max_tiles=16, cols=4)
    save_rgb("sheet.png", sheet)

One tile per instance: the box's square neighbourhood (padded 1.25x, as evaluation crops it,
SPEC §11.1) scaled to ``tile_size``, the skeleton and joint markers coloured by body part
(:func:`freenet.inference.draw_pose`), and a caption (image id, annotation id, category). With a
COCO results file (``eval_ap10k.py``'s ``results.json``) the predicted points are drawn instead,
each on the crop its ``center``/``scale`` describe, captioned with the nearest GT annotation.
``whole=True`` draws whole images with all their instances.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from freenet.data.checks import file_joint_names, find_image
from freenet.data.coco import load_coco_json, load_json
from freenet.data.dataset import read_image
from freenet.errors import DataError
from freenet.inference import draw_pose
from freenet.joints import JointSet, PartGroup, available_joint_sets, load_alias_table, load_joint_set, map_by_name

PIXEL_STD = 200.0     # results' "scale" is the crop side / 200 (SPEC §11.1)
BOX_PADDING = 1.25
CAPTION_HEIGHT = 18   # px under each tile
BACKGROUND = (40, 40, 40)
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class Tile:
    """What one tile shows: a square region of an image and the poses drawn on it."""

    file_name: str
    image_id: object
    ann_id: object                 # GT annotation (for predictions: the nearest GT instance), None if none
    category: str
    centre: tuple[float, float]    # region centre, image px
    side: float                    # region side, image px
    poses: list                    # [(keypoints (J, 2), scores (J,), box [x, y, w, h] or None)]
    score: float | None = None     # the prediction's instance score

    @property
    def caption(self) -> str:
        ann = f" ann {self.ann_id}" if self.ann_id is not None else ""
        score = f" pred {self.score:.2f}" if self.score is not None else ""
        return f"img {self.image_id}{ann} {self.category}{score}"


# ----------------------------------------------------------------------------------------------
# Joint set of a file
# ----------------------------------------------------------------------------------------------

def guess_joint_set(data: dict, num_joints: int) -> JointSet:
    """The joint set to draw a file with: a bundled set whose joint names are the file's (through
    the alias table, in order), else the bundled set of that size when the categories name no
    joints of that count (union files), else one built from the category (names, its 1-based COCO
    skeleton, body-part colours from the alias table)."""
    names = None
    category = {}
    for cat in data.get("categories") or []:
        if isinstance(cat, dict) and isinstance(cat.get("keypoints"), list) and len(cat["keypoints"]) == num_joints:
            names, category = [str(n) for n in cat["keypoints"]], cat
            break
    for name in available_joint_sets():
        js = load_joint_set(name)
        if js.num_joints != num_joints:
            continue
        if names is None:
            return js
        try:
            if np.array_equal(map_by_name(names, js.joints), np.arange(num_joints)):
                return js
        except ValueError:  # the set's names collide under the alias table: not this one
            continue
    names = names or file_joint_names(data, num_joints)
    skeleton = tuple((a - 1, b - 1) for a, b in category.get("skeleton") or []
                     if 1 <= a <= num_joints and 1 <= b <= num_joints)
    aliases = load_alias_table()
    parts: dict[str, list[int]] = {}
    for j, n in enumerate(names):
        canonical = aliases.canonical_name(n)
        if canonical in aliases.parts:
            parts.setdefault(aliases.parts[canonical], []).append(j)
    return JointSet(name=str(category.get("name", "file")), joints=tuple(names), flip_pairs=(),
                    loss_weights=(1.0,) * num_joints, upper_body=(), sigmas=(0.05,) * num_joints,
                    skeleton=skeleton, part_groups=tuple(PartGroup(p, tuple(js), 0.0) for p, js in parts.items()))


# ----------------------------------------------------------------------------------------------
# What to draw
# ----------------------------------------------------------------------------------------------

def _box(ann) -> np.ndarray | None:
    box = ann.get("bbox")
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box) \
            and box[2] > 0 and box[3] > 0:
        return np.asarray(box, dtype=np.float64)
    return None


def _pose_arrays(path, item, num_joints: int, gt: bool):
    kps = item.get("keypoints")
    if not isinstance(kps, list) or len(kps) != 3 * num_joints:
        raise DataError(path, f"'keypoints' must have 3 x {num_joints} values", item.get("id", item.get("image_id")))
    values = np.asarray(kps, dtype=np.float64).reshape(num_joints, 3)  # (J, 3)
    scores = (values[:, 2] > 0).astype(np.float64) if gt else values[:, 2]
    return values[:, :2], scores


def _region(box: np.ndarray | None, image_size) -> tuple[tuple[float, float], float]:
    """Square region (centre, side) around a box padded 1.25x, or the whole image (side 0 when
    the file gives no image size: :func:`render_tile` then takes it from the decoded image)."""
    if box is None:
        w, h = image_size
        return (w / 2.0, h / 2.0), float(max(w, h))
    x, y, w, h = box
    return (x + w / 2.0, y + h / 2.0), float(max(w, h) * BOX_PADDING)


def _nearest_gt(result: dict, kps: np.ndarray, scores: np.ndarray, candidates: list) -> tuple:
    """The (annotation, box) whose box centre is nearest the result's ``center`` (else the mean
    of its scored points); (None, None) without candidates."""
    if "center" in result:
        point = np.asarray(result["center"], dtype=np.float64)
    else:
        point = kps[scores > 0].mean(0) if (scores > 0).any() else kps.mean(0)
    return min(candidates, key=lambda ab: float(np.hypot(*(ab[1][:2] + ab[1][2:] / 2 - point))),
               default=(None, None))


def collect_tiles(ann_file: str | os.PathLike, results: str | os.PathLike | list | None = None, *,
                  image_ids: Sequence | None = None, ann_ids: Sequence | None = None, whole: bool = False,
                  joint_set: JointSet | None = None) -> tuple[list[Tile], JointSet]:
    """Tiles for the GT instances of a COCO file (or the predictions of a results file on it).

    GT: annotations with a non-zero keypoint value, images by ascending id, each image's
    annotations in file order (SPEC §3.2). Predictions: results in file order, each matched to the
    GT annotation of its image whose box centre is nearest the result's ``center`` (or, without
    one, the mean of its points). ``image_ids``/``ann_ids`` keep only those. ``whole`` gives one
    tile per image with all its poses.
    """
    ann_file = str(ann_file)
    data = load_coco_json(ann_file)
    images = {img["id"]: img for img in data.get("images", []) if isinstance(img, dict) and "id" in img}
    cats = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories", []) if isinstance(c, dict)}
    gt = [a for a in data.get("annotations", []) if isinstance(a, dict) and isinstance(a.get("keypoints"), list)
          and any(v != 0 for v in a["keypoints"]) and a.get("image_id") in images]
    gt.sort(key=lambda a: a["image_id"])  # stable: file order within an image
    if results is not None:
        source = str(results) if isinstance(results, (str, os.PathLike)) else "<results>"
        items = load_json(results) if isinstance(results, (str, os.PathLike)) else results
        if not isinstance(items, list):
            raise DataError(source, "expected a JSON list of COCO keypoint results")
        for i, r in enumerate(items):
            if not isinstance(r, dict) or "image_id" not in r or "keypoints" not in r:
                raise DataError(source, f"result {i} needs 'image_id' and 'keypoints'")
            if r["image_id"] not in images:
                raise DataError(source, f"result {i} is for image id {r['image_id']}, which {ann_file} does not list")
    else:
        source, items = ann_file, gt
    if not items:
        raise DataError(source, "nothing to draw: no annotations with keypoints" if results is None else "no results")
    num_joints = len(items[0]["keypoints"]) // 3
    joint_set = joint_set or guess_joint_set(data, num_joints)
    if joint_set.num_joints != num_joints:
        raise DataError(source, f"poses have {num_joints} joints but joint set '{joint_set.name}' has "
                        f"{joint_set.num_joints}")

    gt_by_image: dict = {}
    for a in gt:
        gt_by_image.setdefault(a["image_id"], []).append(a)
    tiles: list[Tile] = []
    for item in items:
        img = images[item["image_id"]]
        size = (float(img.get("width") or 0), float(img.get("height") or 0))
        kps, scores = _pose_arrays(source, item, num_joints, gt=results is None)
        if results is None:
            match, box = item, _box(item)
            centre, side = _region(box, size)
        else:
            candidates = [(a, _box(a)) for a in gt_by_image.get(item["image_id"], []) if _box(a) is not None]
            match, box = _nearest_gt(item, kps, scores, candidates)
            if "center" in item and "scale" in item:
                scale = item["scale"][0] if isinstance(item["scale"], list) else item["scale"]
                centre, side = (float(item["center"][0]), float(item["center"][1])), float(scale) * PIXEL_STD
            else:
                centre, side = _region(box, size)
        ann_id = match.get("id") if match is not None else None
        category = cats.get(item.get("category_id", match.get("category_id") if match else None), "?")
        # GT tiles outline the annotated box; prediction tiles show the points alone.
        tiles.append(Tile(str(img["file_name"]), item["image_id"], ann_id, category, centre, side,
                          [(kps, scores, box if results is None else None)],
                          None if results is None else float(item.get("score", 0.0))))
    if image_ids is not None:
        wanted = set(image_ids)
        tiles = [t for t in tiles if t.image_id in wanted]
    if ann_ids is not None:
        wanted = set(ann_ids)
        tiles = [t for t in tiles if t.ann_id in wanted]
    if whole:
        merged: dict = {}
        for t in tiles:
            if t.image_id not in merged:
                img = images[t.image_id]
                size = (float(img.get("width") or 0), float(img.get("height") or 0))
                centre, side = _region(None, size)
                merged[t.image_id] = Tile(t.file_name, t.image_id, None, t.category, centre, side, [])
            merged[t.image_id].poses += t.poses
        for t in merged.values():
            noun = "prediction" if results is not None else "instance"
            t.category = f"{len(t.poses)} {noun}{'s' if len(t.poses) != 1 else ''}"
        tiles = list(merged.values())
    return tiles, joint_set


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

def tile_matrix(centre, side: float, tile_size: int) -> np.ndarray:
    """(2, 3) affine map from image px to tile px: the square region fills the tile."""
    k = tile_size / max(side, 1e-6)
    return np.array([[k, 0.0, tile_size / 2.0 - k * centre[0]], [0.0, k, tile_size / 2.0 - k * centre[1]]])


def render_tile(image: np.ndarray, tile: Tile, joint_set: JointSet, tile_size: int = 256,
                threshold: float = 0.4, names: bool = False) -> np.ndarray:
    """The tile's region of an RGB image, ``tile_size`` square, with its poses (and joint names)."""
    centre, side = (tile.centre, tile.side) if tile.side > 0 else _region(None, image.shape[1::-1])
    m = tile_matrix(centre, side, tile_size)
    out = cv2.warpAffine(image, m, (tile_size, tile_size), flags=cv2.INTER_AREA if m[0, 0] < 1 else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
    for kps, scores, box in tile.poses:
        pts = kps @ m[:, :2].T + m[:, 2]  # (J, 2) tile px
        tile_box = None if box is None else np.r_[box[:2] * m[0, 0] + m[:, 2], box[2:] * m[0, 0]]
        out = draw_pose(out, pts, scores, joint_set, threshold=threshold, box=tile_box)
        if names:
            for j in np.flatnonzero(np.asarray(scores) >= threshold):
                org = (int(round(pts[j, 0])) + 4, int(round(pts[j, 1])) - 4)
                cv2.putText(out, joint_set.joints[j], org, FONT, 0.3, (0, 0, 0), 2, cv2.LINE_AA)
                cv2.putText(out, joint_set.joints[j], org, FONT, 0.3, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str], cols: int = 4) -> np.ndarray:
    """Tiles (equal squares) in a grid of ``min(cols, n)`` columns, a caption strip under each.

    Size: ``rows * (T + CAPTION_HEIGHT)`` by ``columns * T`` with ``rows = ceil(n / columns)``.
    """
    if not tiles:
        raise ValueError("no tiles to put on a contact sheet")
    size = tiles[0].shape[0]
    columns = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell = size + CAPTION_HEIGHT
    sheet = np.full((rows * cell, columns * size, 3), BACKGROUND, dtype=np.uint8)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, columns)
        strip = np.full((CAPTION_HEIGHT, size, 3), BACKGROUND, dtype=np.uint8)  # clips a long caption
        cv2.putText(strip, caption, (4, CAPTION_HEIGHT - 5), FONT, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
        sheet[r * cell:(r + 1) * cell, c * size:(c + 1) * size] = np.concatenate([tile, strip])
    return sheet


def draw_contact_sheet(ann_file: str | os.PathLike, image_dirs: Sequence[str | os.PathLike],
                       results: str | os.PathLike | list | None = None, *, joint_set: JointSet | None = None,
                       image_ids: Sequence | None = None, ann_ids: Sequence | None = None, max_tiles: int = 16,
                       cols: int = 4, tile_size: int = 256, whole: bool = False, names: bool = False,
                       threshold: float = 0.4, seed: int | None = None) -> tuple[np.ndarray, list[Tile]]:
    """Contact sheet of the first ``max_tiles`` tiles (a seeded random choice with ``seed``).

    Returns the RGB sheet and the tiles drawn, in sheet order (row by row). Images are read from
    the first of ``image_dirs`` holding them; a missing or unreadable one is a :class:`DataError`.
    """
    tiles, joint_set = collect_tiles(ann_file, results, image_ids=image_ids, ann_ids=ann_ids, whole=whole,
                                     joint_set=joint_set)
    if not tiles:
        raise DataError(ann_file, "no instance matches the requested ids")
    if seed is not None and len(tiles) > max_tiles:
        pick = np.sort(np.random.default_rng(seed).choice(len(tiles), max_tiles, replace=False))
        tiles = [tiles[i] for i in pick]
    tiles = tiles[:max_tiles]
    rendered, cache = [], {}
    for t in tiles:
        if t.file_name not in cache:
            found = find_image(t.file_name, image_dirs)
            tried = " or ".join(str(Path(d) / t.file_name) for d in image_dirs)
            cache[t.file_name] = read_image(str(found) if found else tried, t.image_id)
        rendered.append(render_tile(cache[t.file_name], t, joint_set, tile_size, threshold, names))
    return contact_sheet(rendered, [t.caption for t in tiles], cols), tiles
