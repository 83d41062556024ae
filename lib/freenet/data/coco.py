"""COCO-format keypoint annotations -> :class:`Record` lists (SPEC §3.1, §3.2), union conversion (§2.4).

Three things live here:

* :func:`load_coco_records` reads one COCO keypoint file into records, one per annotated instance,
  in the order the seeded sampler of §3.5 depends on (images by ascending id, each image's
  annotations in file order). Bad files fail loudly with the file name and the annotation id.
* :func:`to_union` moves records from their source joint set onto a union (§2.4), one vectorised
  remap per source dataset.
* :class:`DataLayout` knows where every dataset lives under a data root (§3.1, the FreeNet README
  layout) and explains what it expected when something is missing.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from freenet.errors import DataError
from freenet.joints import JointSet, load_joint_set, map_by_name, remap_keypoints
from freenet.data.records import Record

logger = logging.getLogger(__name__)

# Spellings of the union files' per-annotation ``from`` field -> the source names of the joint-set
# files (``resources/joints/union*.json`` "sources").
SOURCE_ALIASES = {
    "ap_10k": "ap10k",
    "ap10k": "ap10k",
    "animal_pose": "animalpose",
    "animalpose": "animalpose",
    "tigdog": "tigdog",
    "tigdog_horse": "tigdog",
    "tigdog_tiger": "tigdog",
}


def normalize_source(name: str | None) -> str:
    """``'ap_10k' -> 'ap10k'``, ``'animal_pose' -> 'animalpose'``; unknown names pass through."""
    if not name:
        return ""
    return SOURCE_ALIASES.get(str(name).strip().lower(), str(name))


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------

def load_json(path: str | os.PathLike):
    """Parse a JSON file; a missing, unreadable or malformed file is a :class:`DataError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DataError(path, "file not found") from e
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DataError(path, f"not a UTF-8 text file: {e}") from e


def load_coco_json(path: str | os.PathLike) -> dict:
    """Read a COCO-style JSON object from ``path`` (errors as in :func:`load_json`)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    return data


def file_joint_order(ann_file: str | os.PathLike, data: dict, joint_set: JointSet) -> tuple[list[int] | None, str]:
    """How the file's joint names line up with ``joint_set`` (SPEC §2.2: AnimalPose maps by names).

    The categories that list exactly J names say the file's order; their names are resolved
    through the alias table (:func:`~freenet.joints.map_by_name`). Returns ``(source, problem)``:
    ``source[t]`` is the file joint that goes to the set's slot t when the names are the set's
    joints in another order (MMPose's AnimalPose conversion read as ``animalpose``), else None
    (the set's own order, or no category lists J names: union files name only AP-10K's 17);
    ``problem`` says which names are not the set's ('' when all are). Raises :class:`DataError`
    naming the file and the category when categories list the joints in different orders.
    """
    categories = [c for c in data.get("categories") or [] if isinstance(c, dict)
                  and isinstance(c.get("keypoints"), list) and len(c["keypoints"]) == joint_set.num_joints]
    if not categories:
        return None, ""
    names = [str(n) for n in categories[0]["keypoints"]]
    for cat in categories[1:]:
        if [str(n) for n in cat["keypoints"]] != names:
            raise DataError(ann_file, f"categories[id={cat.get('id')}].keypoints lists the joints in another order "
                            f"than categories[id={categories[0].get('id')}]: split the file per joint order")
    index = map_by_name(names, joint_set.joints)     # file joint -> slot in the set, -1 = unknown
    order = np.arange(joint_set.num_joints)
    if np.array_equal(index, order):
        return None, ""
    if not np.array_equal(np.sort(index), order):
        unknown = [n for n, i in zip(names, index.tolist()) if i < 0]
        return None, (f"the joint names of its categories are not those of joint set '{joint_set.name}' ("
                      + (f"unknown: {', '.join(unknown)}" if unknown else "some joint named twice") + ")")
    return np.argsort(index).tolist(), ""


def in_joint_set_order(ann_file: str | os.PathLike, data: dict, joint_set: JointSet) -> dict:
    """``data`` with every annotation's keypoints in ``joint_set``'s order (:func:`file_joint_order`).

    A file in the set's order comes back as it is; one that lists the set's joints in another
    order comes back as a copy with each annotation's keypoint triplets permuted (``data`` is left
    as it is). Names that are not the set's are reported in the log and the file order is kept.
    """
    source, problem = file_joint_order(ann_file, data, joint_set)
    if problem:
        logger.warning("%s: %s; reading the keypoints in file order", ann_file, problem)
    if source is None:
        return data
    logger.info("%s: joints listed in another order than joint set '%s'; reordered by name", ann_file, joint_set.name)
    return reorder_joints(data, source)


def reorder_joints(data: dict, source: Sequence[int]) -> dict:
    """A copy of ``data`` whose annotations' keypoint triplets are ``source[0], source[1], ...`` of the
    file's; annotations whose keypoints are not a list of 3 * len(source) values are kept as they are."""
    if not isinstance(data.get("annotations"), list):
        return data

    def reorder(ann):
        kps = ann.get("keypoints") if isinstance(ann, dict) else None
        if not isinstance(kps, list) or len(kps) != 3 * len(source):
            return ann
        return {**ann, "keypoints": [v for s in source for v in kps[3 * s:3 * s + 3]]}

    return {**data, "annotations": [reorder(a) for a in data["annotations"]]}


# Python types of JSON numbers (``type`` is exact: a JSON true/false, a bool, is not one).
_NUMBER_TYPES = frozenset({int, float})


def _first_non_number(ann_file, anns: Sequence[dict], field: str, message: str):
    """Raise :class:`DataError` for the first annotation whose ``field`` holds a value that is not a
    number, naming it and the value as JSON spells it (the slow path, only once something is wrong)."""
    for ann in anns:
        for pos, value in enumerate(ann[field]):
            if type(value) not in _NUMBER_TYPES:
                where = f" at joint {pos // 3}" if field == "keypoints" else ""
                raise DataError(ann_file, f"{message}, got {json.dumps(value)[:40]}{where}", ann["id"])


def _number_array(ann_file, anns: Sequence[dict], field: str, width: int, message: str, dtype) -> np.ndarray:
    """(N, width) array of the annotations' ``field`` lists (``width`` values each). A value that is not a
    JSON number (a string, true/false, null: NumPy would read "12" as 12 and null as NaN) is a
    :class:`DataError`; the type test is one C-level pass over all values, not a Python loop."""
    flat = list(chain.from_iterable([a[field] for a in anns]))  # one flat list converts faster than nested ones
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        _first_non_number(ann_file, anns, field, message)
    return np.asarray(flat, dtype=dtype).reshape(len(anns), width)


def keypoint_values(ann_file: str | os.PathLike, anns: Sequence[dict], num_joints: int,
                    joint_names: Sequence[str] | None = None) -> np.ndarray:
    """(N, J, 3) float32 x, y, visibility of annotations whose ``keypoints`` hold 3 * J values, checked
    in one array pass: a value that is not a finite number (a string, true/false, null, NaN, infinity)
    or a visibility outside {0, 1, 2} is a :class:`DataError` naming the file, the first such
    annotation, the field and the joint (by name when ``joint_names`` are given)."""
    message = "'keypoints' must contain only numbers"
    values = _number_array(ann_file, anns, "keypoints", 3 * num_joints, message, np.float32)
    values = values.reshape(len(anns), num_joints, 3)             # (N, J, 3)
    finite = np.isfinite(values).all(axis=(1, 2))
    if not finite.all():
        raise DataError(ann_file, f"{message} (found NaN or infinity)", anns[int(np.argmin(finite))]["id"])
    vis = values[..., 2]                                           # (N, J)
    bad = (vis != 0) & (vis != 1) & (vis != 2)
    if bad.any():
        k, j = (int(i[0]) for i in np.nonzero(bad))                # first annotation, its first bad joint
        name = f" ({joint_names[j]})" if joint_names is not None else ""
        raise DataError(ann_file, f"'keypoints' visibility must be 0, 1 or 2, got {vis[k, j]:g} at joint {j}{name}",
                        anns[k]["id"])
    return values


def box_values(ann_file: str | os.PathLike, anns: Sequence[dict]) -> np.ndarray:
    """(N, 4) float64 [x, y, w, h] of annotations whose ``bbox`` is a list of 4 values. A value that is
    not a finite number (a JSON 1e400 reads as infinity) is a :class:`DataError` naming the file and
    the first such annotation: a broken file, unlike a box with w <= 0 or h <= 0, which §3.2 drops."""
    boxes = _number_array(ann_file, anns, "bbox", 4, "'bbox' must be 4 numbers [x, y, w, h]", np.float64)
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        ann = anns[int(np.argmin(finite))]
        raise DataError(ann_file, f"'bbox' must be 4 finite numbers [x, y, w, h], got {ann['bbox']!r:.80}",
                        ann["id"])
    return boxes


class _DirListing:
    """Existence checks through one directory listing per folder instead of one stat per image.

    Data roots hold tens of thousands of images, sometimes on network file systems; listing a
    folder once is far cheaper than probing each file.
    """

    def __init__(self):
        self._cache: dict[str, frozenset[str]] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        names = self._cache.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder or "."))
            except OSError:  # missing or unreadable folder: nothing in it exists
                names = frozenset()
            self._cache[folder] = names
        return name in names


def _require(ann_file, obj, key, what, record_id=None):
    if key not in obj:
        raise DataError(ann_file, f"{what} has no '{key}' field", record_id)
    return obj[key]


def require_id(ann_file, obj, key, what, record_id=None) -> int:
    """An id field, which must be an integer: records, splits and id files sort and offset them."""
    value = _require(ann_file, obj, key, what, record_id)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(ann_file, f"{what}'s '{key}' must be an integer, got {value!r:.40}", record_id)
    return value


def _infer_num_joints(ann_file, annotations, categories) -> int:
    """J from the most common keypoint count of the annotations (so that one bad annotation is the
    one reported, not the good ones), else from the first category's names."""
    labeled = [a for a in annotations
               if isinstance(a, dict) and isinstance(a.get("keypoints"), list) and a["keypoints"]]
    lengths = Counter(len(a["keypoints"]) for a in labeled)
    whole = [n for n, _ in lengths.most_common() if n % 3 == 0]      # ties: the first annotation's count
    if whole:
        return whole[0] // 3
    if labeled:
        n = len(labeled[0]["keypoints"])
        raise DataError(ann_file, f"'keypoints' has {n} values, not a multiple of 3", labeled[0].get("id"))
    for cat in categories or []:
        if isinstance(cat, dict) and cat.get("keypoints"):
            return len(cat["keypoints"])
    return 0


def load_coco_records(ann_file: str | os.PathLike, image_root: str | os.PathLike,
                      joint_set: JointSet | None = None, source: str | None = None, *,
                      check_images: bool = True,
                      fallback_roots: Mapping[str, str | os.PathLike] | None = None) -> list[Record]:
    """One :class:`Record` per annotated instance of a COCO keypoint file (SPEC §3.2).

    Args:
        ann_file: the COCO JSON file.
        image_root: folder that ``file_name`` is relative to.
        joint_set: the joint set the file is written in; its ``num_joints`` is the expected J.
            Without it, J is read off the first annotation (union files list only the 17 AP-10K
            names in their categories but carry 21 or 24 joints per annotation).
        source: dataset name for records whose annotation has no ``from`` field.
        check_images: raise when an image file of a kept instance does not exist.
        fallback_roots: ``{source: folder}`` tried after ``image_root`` for images not found
            there, so the union files can use the images of the source datasets in place
            (``ap10k_animalpose/data`` need not be a second copy).

    Kept instances (§3.2): box with w > 0 and h > 0 and at least one non-zero keypoint value.
    Order: images by ascending id, each image's annotations in file order; the seeded sampler
    (§3.5) draws indices into exactly this order. Annotations without a box or keypoints are
    dropped (and counted in the log), as the original loader did.

    Raises :class:`DataError` naming the file and the annotation id for: malformed JSON, missing
    ``images``/``annotations``, duplicate image or annotation ids, an annotation on an unknown
    image, a keypoint list whose length is not 3*J, a keypoint value that is not a finite number
    or a visibility outside {0, 1, 2}, a malformed box or one with a value that is not a finite
    number, a missing image file (a ``category_id`` not in ``categories`` is a warning). Values
    are checked on every annotation, kept or dropped: a file with any of these is broken
    (``tools/check_annotations.py`` lists them all).
    """
    ann_file = str(ann_file)
    data = load_coco_json(ann_file)
    if joint_set is not None:
        data = in_joint_set_order(ann_file, data, joint_set)
    images = _require(ann_file, data, "images", "the file")
    annotations = _require(ann_file, data, "annotations", "the file")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataError(ann_file, "'images' and 'annotations' must be lists")

    images_by_id: dict[int, dict] = {}
    for img in images:
        if not isinstance(img, dict):
            raise DataError(ann_file, f"an entry of 'images' is not an object: {img!r:.80}")
        img_id = require_id(ann_file, img, "id", "an image")
        _require(ann_file, img, "file_name", "image", img_id)
        if img_id in images_by_id:
            raise DataError(ann_file, f"duplicate image id {img_id}", img_id)
        images_by_id[img_id] = img

    num_joints = joint_set.num_joints if joint_set is not None else _infer_num_joints(
        ann_file, annotations, data.get("categories"))
    default_source = normalize_source(source)
    categories = _category_ids(data.get("categories"))
    # An annotation of a category the file does not list is loaded with a warning: public files do
    # that (MMPose's Animal Kingdom sample lists categories 1 and 2, its annotations are 4), and a
    # file's categories share one joint layout.
    unlisted: list[tuple[int, int]] = []            # (category id, annotation id) of unlisted categories

    # Structure, one annotation at a time; the values (numbers, finite, visibility codes) are
    # checked below in one array pass over all annotations.
    rows: list[dict] = []          # annotations that passed, in file order
    boxed: list[int] = []          # indices into rows of those with a box
    labeled: list[int] = []        # ... and of those with a keypoint list
    seen_ann_ids: set = set()
    for ann in annotations:
        if not isinstance(ann, dict):
            raise DataError(ann_file, f"an entry of 'annotations' is not an object: {ann!r:.80}")
        ann_id = require_id(ann_file, ann, "id", "an annotation")
        if ann_id in seen_ann_ids:
            raise DataError(ann_file, f"duplicate annotation id {ann_id}", ann_id)
        seen_ann_ids.add(ann_id)
        img_id = require_id(ann_file, ann, "image_id", "annotation", ann_id)
        if "category_id" in ann:
            cat_id = require_id(ann_file, ann, "category_id", "annotation", ann_id)
            if categories is not None and cat_id not in categories:
                unlisted.append((cat_id, ann_id))
        if img_id not in images_by_id:
            raise DataError(ann_file, f"annotation points at unknown image id {img_id}", ann_id)
        kps = ann.get("keypoints") or []  # no field, null or []: no labeled joint, dropped below as the original did
        if not isinstance(kps, list):
            raise DataError(ann_file, f"'keypoints' must be a list of numbers, got {type(kps).__name__}", ann_id)
        if kps and len(kps) != 3 * num_joints:
            raise DataError(ann_file, f"'keypoints' has {len(kps)} values, expected 3*{num_joints} = "
                            f"{3 * num_joints} for {num_joints} joints"
                            + (f" (joint set '{joint_set.name}')" if joint_set is not None else ""), ann_id)
        box = ann.get("bbox")
        if box is not None and not (isinstance(box, list) and len(box) == 4):
            raise DataError(ann_file, f"'bbox' must be 4 numbers [x, y, w, h], got {box!r:.80}", ann_id)
        if box is not None:
            boxed.append(len(rows))
        if kps:
            labeled.append(len(rows))
        rows.append(ann)

    if unlisted:
        categories_seen = sorted({c for c, _ in unlisted})
        logger.warning("%s: %d annotations (first ids %s) have a 'category_id' not in 'categories' (ids %s); "
                       "loaded with the joint layout of the file's categories", ann_file, len(unlisted),
                       ", ".join(str(a) for _, a in unlisted[:5]), ", ".join(map(str, categories_seen)))

    n = len(rows)
    boxes = np.zeros((n, 4))                                        # (A, 4) x, y, w, h; 0 = no box
    boxes[boxed] = box_values(ann_file, [rows[i] for i in boxed])
    values = np.zeros((n, num_joints, 3), dtype=np.float32)         # (A, J, 3) x, y, visibility
    values[labeled] = keypoint_values(ann_file, [rows[i] for i in labeled], num_joints,
                                      joint_set.joints if joint_set is not None else None)
    has_box = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)                 # (A,) §3.2: w > 0 and h > 0
    has_kps = (values != 0).any(axis=(1, 2))                        # (A,) a non-zero keypoint value
    # Images by ascending id, each image's annotations in file order (a stable sort).
    kept = np.asarray(sorted(np.flatnonzero(has_box & has_kps).tolist(), key=lambda i: rows[i]["image_id"]),
                      dtype=np.int64)
    if not len(kept):
        logger.info("%s: no annotated instances (%d annotations)", ann_file, len(annotations))
        return []

    coords = np.ascontiguousarray(values[kept, :, :2])  # (N, J, 2)
    vis = np.ascontiguousarray(values[kept, :, 2])      # (N, J)
    kept_boxes = boxes[kept].astype(np.float32)         # (N, 4)
    pairs = [(rows[i]["image_id"], rows[i]) for i in kept.tolist()]
    paths = image_paths(ann_file, pairs, images_by_id, Path(image_root), default_source,
                        check_images, fallback_roots)
    records = [
        Record(image_path=paths[img_id], image_id=int(img_id), ann_id=int(ann["id"]),
               category_id=int(ann.get("category_id", 0)), box=kept_boxes[i], keypoints=coords[i],
               visibility=vis[i], source=normalize_source(ann.get("from")) or default_source)
        for i, (img_id, ann) in enumerate(pairs)
    ]
    no_box, no_kps = int((~has_box).sum()), int((has_box & ~has_kps).sum())
    if no_box or no_kps:
        logger.info("%s: kept %d of %d annotations (dropped: %d without a valid box, %d without keypoints)",
                    ann_file, len(records), len(annotations), no_box, no_kps)
    return records


def _category_ids(categories) -> set[int] | None:
    """Ids of the file's ``categories`` (None when the file has no such list: nothing to check against)."""
    if not isinstance(categories, list):
        return None
    return {c["id"] for c in categories if isinstance(c, dict) and isinstance(c.get("id"), int)}


def image_paths(ann_file, kept, images_by_id, image_root: Path, default_source=None, check_images=False,
                fallback_roots=None) -> dict[int, str]:
    """Image path per image id of the ``(image_id, annotation)`` pairs ``kept``, looked up once per
    image (training and evaluation alike).

    The file system is touched only when images are checked or fallback roots must be chosen
    among; otherwise the path is ``image_root / file_name``. A missing image is an error naming
    ``ann_file`` when ``check_images``, else the primary path is kept.
    """
    fallback = {normalize_source(k): Path(v) for k, v in (fallback_roots or {}).items()}
    listing = _DirListing() if (check_images or fallback) else None
    paths: dict[int, str] = {}
    for img_id, ann in kept:
        if img_id in paths:
            continue
        img = images_by_id[img_id]
        file_name = str(img["file_name"])
        primary = str(image_root / file_name)
        paths[img_id] = primary
        if listing is None or listing.exists(primary):
            continue
        src = normalize_source(ann.get("from") or img.get("from")) or default_source
        # The image's own source first, then any other fallback root.
        roots = [fallback[src]] if src in fallback else []
        roots += [r for s, r in fallback.items() if s != src]
        tried = [primary] + [str(r / file_name) for r in roots]
        found = next((p for p in tried[1:] if listing.exists(p)), None)
        if found is not None:
            paths[img_id] = found
        elif check_images:
            raise DataError(ann_file, f"image file not found: {primary} (image id {img_id}; tried "
                            + ", ".join(tried) + ")", ann["id"])
    return paths


# ----------------------------------------------------------------------------------------------
# Union conversion
# ----------------------------------------------------------------------------------------------

def to_union(records: Sequence[Record], union: JointSet, source: str | None = None) -> list[Record]:
    """Records of source joint sets -> records in ``union``'s joint order (SPEC §2.4).

    Each record's source (``record.source``, else ``source``) selects the map in the union's
    joint-set file; joints the source lacks become (0, 0) with visibility 0. The remap is one
    array operation per source dataset. Input records are not modified; order is preserved.
    """
    default = normalize_source(source)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        src = normalize_source(rec.source) or default
        if not src:
            raise DataError(rec.image_path, "record has no source dataset and no default source was "
                            f"given; cannot map it onto '{union.name}'", rec.ann_id)
        groups[src].append(i)

    out: list[Record | None] = [None] * len(records)
    for src, members in groups.items():
        index = union.source_index(src)  # (Js,) union slot per source joint, -1 = dropped
        for i in members:
            if records[i].num_joints != len(index):
                rec = records[i]
                raise DataError(rec.image_path, f"record has {rec.num_joints} joints but the '{src}' map "
                                f"of '{union.name}' ({union.path}) expects {len(index)}; is it already "
                                "converted, or loaded with the wrong joint set?", rec.ann_id)
        kps = np.stack([records[i].keypoints for i in members])     # (n, Js, 2)
        vis = np.stack([records[i].visibility for i in members])    # (n, Js)
        new_k, new_v = remap_keypoints(kps, vis, index, union.num_joints)  # (n, Ju, 2), (n, Ju)
        for row, i in enumerate(members):
            rec = records[i]
            out[i] = Record(rec.image_path, rec.image_id, rec.ann_id, rec.category_id, rec.box.copy(),
                            new_k[row], new_v[row], src)
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Data-root layout
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    """Where one dataset lives under the data root (SPEC §3.1)."""

    key: str                  # name used by the code ("ap10k", "ap10k_animalpose", ...)
    folder: str               # folder under the data root
    pattern: str              # annotation file name, "{split}" filled in
    joint_set: str            # bundled joint set the files are written in
    title: str                # human-readable name
    origin: str               # where the annotation files are published
    sources: tuple[str, ...] = ()  # for union files: datasets whose images they use
    splits: tuple[str, ...] = ("train", "val")


_FREENET_FILES = "the FreeNet repository (github.com/yzrs/FreeNet), resources/annotation_files"

DATASETS: dict[str, DatasetSpec] = {s.key: s for s in (
    DatasetSpec("ap10k", "ap_10k", "ap10k-{split}-split1.json", "ap10k", "AP-10K",
                "the official AP-10K release (github.com/AlexTheBad/AP-10K)",
                splits=("train", "val", "test")),
    DatasetSpec("animalpose", "animal_pose", "animal_pose_{split}.json", "animalpose", "AnimalPose",
                f"{_FREENET_FILES} (images: the official AnimalPose site, "
                "github.com/noahcao/animal-pose-dataset)"),
    DatasetSpec("tigdog", "tigdog", "tigdog_{split}.json", "tigdog", "TigDog",
                f"{_FREENET_FILES} (images: the official TigDog site, calvin-vision.net/datasets/tigdog; "
                "file names start with horse/ or tiger/)"),
    DatasetSpec("ap10k_animalpose", "ap10k_animalpose", "ap_10k_animal_pose_union_{split}.json", "union21",
                "AP-10K + AnimalPose union (21 joints)", _FREENET_FILES, sources=("ap10k", "animalpose")),
    DatasetSpec("ap10k_animalpose_tigdog", "ap10k_animalpose_tigdog", "ap10k_animalpose_tigdog_{split}.json",
                "union24", "AP-10K + AnimalPose + TigDog union (24 joints)", _FREENET_FILES,
                sources=("ap10k", "animalpose", "tigdog")),
)}


class DataLayout:
    """The data root of SPEC §3.1::

        <root>/ap_10k/{annotations/ap10k-{train,val,test}-split1.json, data/}
        <root>/animal_pose/{annotations/animal_pose_{train,val}.json, data/}
        <root>/tigdog/{annotations/tigdog_{train,val}.json, data/{horse,tiger}/}
        <root>/ap10k_animalpose/annotations/ap_10k_animal_pose_union_{train,val}.json
        <root>/ap10k_animalpose_tigdog/annotations/ap10k_animalpose_tigdog_{train,val}.json

    Union datasets read their images from their own ``data/`` folder if present, else from the
    source datasets' ``data/`` folders.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def spec(dataset: str) -> DatasetSpec:
        if dataset not in DATASETS:
            raise KeyError(f"unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
        return DATASETS[dataset]

    def annotation_file(self, dataset: str, split: str) -> Path:
        spec = self.spec(dataset)
        return self.root / spec.folder / "annotations" / spec.pattern.format(split=split)

    def image_dir(self, dataset: str) -> Path:
        return self.root / self.spec(dataset).folder / "data"

    def fallback_roots(self, dataset: str) -> dict[str, Path]:
        """Image folders of the source datasets a union file draws on (empty for single datasets)."""
        return {src: self.image_dir(src) for src in self.spec(dataset).sources}

    def load(self, dataset: str, split: str, joint_set: JointSet | str | None = None,
             check_images: bool = True) -> list[Record]:
        """Records of ``dataset``/``split`` in the file's joint order (§3.2).

        ``joint_set`` defaults to the set the files are written in (``ap10k``, ``animalpose``,
        ``tigdog``, ``union21``, ``union24``).
        """
        spec = self.spec(dataset)
        ann_file = self.annotation_file(dataset, split)
        if not ann_file.is_file():
            raise DataError(ann_file, f"annotation file for {spec.title} ({dataset!r}, split {split!r}) "
                            f"not found. It comes from {spec.origin}.\n{self.describe()}")
        if joint_set is None or isinstance(joint_set, str):
            joint_set = load_joint_set(joint_set or spec.joint_set)
        return load_coco_records(ann_file, self.image_dir(dataset), joint_set,
                                 source=None if spec.sources else dataset, check_images=check_images,
                                 fallback_roots=self.fallback_roots(dataset))

    def describe(self, datasets: Iterable[str] | None = None) -> str:
        """A tree of what the layout expects under the root, each path marked present or missing."""
        def mark(p: Path) -> str:
            return "present" if p.exists() else "MISSING"

        lines = [f"data root {self.root} [{mark(self.root)}]; expected layout:"]
        for key in datasets or DATASETS:
            spec = self.spec(key)
            lines.append(f"  {spec.folder}/   {spec.title} (dataset '{key}'; files from {spec.origin})")
            for split in spec.splits:
                f = self.annotation_file(key, split)
                lines.append(f"    annotations/{f.name}   [{mark(f)}]")
            img = self.image_dir(key)
            if spec.sources:
                srcs = ", ".join(f"{DATASETS[s].folder}/data" for s in spec.sources)
                lines.append(f"    data/   [{mark(img)}] (optional: images are also looked up in {srcs})")
            else:
                lines.append(f"    data/   [{mark(img)}]")
        lines.append("Annotation files of AnimalPose, TigDog and the unions are published in the FreeNet "
                     "repository's resources/annotation_files; AP-10K's come with the official release; "
                     "images come from the official dataset sites.")
        return "\n".join(lines)
