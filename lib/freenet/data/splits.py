"""Labeled subsets: missing-joint split files, image-id lists, seeded ratio sampling (SPEC §3.3–§3.5).

A *split file* (§3.3) is a JSON list of ``{"image_id", "vis": [J ints 0/1], "box": [x, y, w, h]}``.
Applying it hides joints of matched instances (their visibility is replaced, coordinates stay).
The FreeNet authors ship such files for AP-10K; :func:`generate_missing_joint_split` makes new
ones for any dataset and seed, with the authors' settings available as :data:`SPLIT_PRESETS`.

:func:`sample_by_ratio` is the per-annotation random labeled subset of the mixed-dataset scripts
(§3.4, §3.5); with the default seed it reproduces the authors' shipped id lists exactly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from freenet.data.coco import load_json
from freenet.data.records import Record
from freenet.errors import DataError

logger = logging.getLogger(__name__)

# The authors' synthetic AP-10K settings (§3.3), in AP-10K joint indices (§2.1). Each instance
# keeps the joints of one family plus the shared joints. Use as
# ``generate_missing_joint_split(records, **SPLIT_PRESETS["level0"], seed=...)``.
SPLIT_PRESETS: dict[str, dict] = {
    # "5 shared joints": eyes, nose, neck, tail shared; front legs or back legs.
    "level0": {"families": {"front": [5, 6, 7, 8, 9, 10], "back": [11, 12, 13, 14, 15, 16]},
               "shared": [0, 1, 2, 3, 4]},
    # "9 shared joints": level 0 plus the four paws.
    "level1": {"families": {"front": [5, 6, 7, 8, 9, 10], "back": [11, 12, 13, 14, 15, 16]},
               "shared": [0, 1, 2, 3, 4, 7, 10, 13, 16]},
    # 25 -> 5 images per species: head, front legs or back legs; neck and tail shared.
    "25_5": {"families": {"head": [0, 1, 2], "front": [5, 6, 7, 8, 9, 10], "back": [11, 12, 13, 14, 15, 16]},
             "shared": [3, 4]},
}


# ----------------------------------------------------------------------------------------------
# Split files
# ----------------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_split_file(path: str | os.PathLike, num_joints: int = 17) -> list[dict]:
    """Read and validate a split file (§3.3).

    Returns entries ``{"image_id": int, "vis": list[int], "box": list[float]}``. Visibility values
    may be 0, 1 or 2 (COCO codes; the authors' files use 0/1). A bad entry raises
    :class:`DataError` naming the file, the entry index and its image id.
    """
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(path, f"a split file is a JSON list of entries, got {type(data).__name__}")
    entries = []
    for i, e in enumerate(data):
        image_id = e.get("image_id") if isinstance(e, dict) else None
        where = f"entry {i}" + (f" (image id {image_id})" if image_id is not None else "")
        if not isinstance(e, dict) or not {"image_id", "vis", "box"} <= set(e):
            raise DataError(path, f"{where}: expected an object with 'image_id', 'vis' and 'box'", image_id)
        if not _is_int(image_id):
            raise DataError(path, f"{where}: 'image_id' must be an integer", image_id)
        vis, box = e["vis"], e["box"]
        if not (isinstance(vis, list) and len(vis) == num_joints and all(_is_int(v) and 0 <= v <= 2 for v in vis)):
            raise DataError(path, f"{where}: 'vis' must be {num_joints} integers in {{0, 1, 2}}", image_id)
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DataError(path, f"{where}: 'box' must be 4 numbers [x, y, w, h]", image_id)
        entries.append({"image_id": image_id, "vis": list(vis), "box": [float(v) for v in box]})
    return entries


def _json_number(v: float) -> int | float:
    """Integral values as ints (the authors' files hold integer boxes), others rounded to 1e-3 px."""
    v = round(float(v), 3)
    return int(v) if v.is_integer() else v


def write_split_file(path: str | os.PathLike, entries: Sequence[Mapping]) -> None:
    """Write entries in the split-file format (§3.3), atomically (temp file + rename)."""
    path = Path(path)
    rows = [{"image_id": int(e["image_id"]), "vis": [int(v) for v in e["vis"]],
             "box": [_json_number(v) for v in e["box"]]} for e in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    os.replace(tmp, path)


@dataclass(frozen=True)
class SplitReport:
    """What applying a split file did (§3.3)."""

    path: str
    entries: int
    matched: int                          # entries that found a record
    unmatched: int                        # entries that found none
    unmatched_image_ids: tuple[int, ...]  # the first few of those, for the message
    records: int
    untouched: int                        # records no entry matched (their visibility is unchanged)
    rematched: int                        # entries that hit a record an earlier entry had set already

    def __str__(self) -> str:
        text = (f"{self.path or 'split'}: {self.matched}/{self.entries} entries matched a record, "
                f"{self.untouched}/{self.records} records untouched")
        if self.unmatched:
            text += (f"; {self.unmatched} entries matched no record (first image ids: "
                     f"{', '.join(map(str, self.unmatched_image_ids))})")
        if self.rematched:
            text += f"; {self.rematched} entries re-set a record already set by an earlier entry"
        return text


def apply_split(records: Sequence[Record], entries: Sequence[Mapping], *, tol: float = 2.0,
                path: str | os.PathLike = "", num_reported: int = 10) -> tuple[list[Record], SplitReport]:
    """Replace the visibility of the instances a split file lists (SPEC §3.3).

    For each entry, the first record (in ``records`` order) of the entry's image whose box is
    within ``tol`` pixels of the entry's box on every coordinate gets ``vis`` as its visibility;
    keypoint coordinates are untouched. As in the original loader, an entry is matched against
    all records of its image, so if two entries match the same record the later one wins
    (counted as ``rematched``), and records that no entry matches keep their full annotation
    (counted as ``untouched``; the authors' ``load_missing_anns`` leaves them as loaded, so they
    stay in the labeled set unmasked). Unmatched entries are logged as one counted warning.

    Returns new records (copies; the inputs are not modified) in the input order, and a report.
    """
    path = str(path)
    n, m = len(records), len(entries)
    num_joints = records[0].num_joints if n else (len(entries[0]["vis"]) if m else 0)
    for r in records:
        if r.num_joints != num_joints:
            raise DataError(r.image_path, f"records of one split must share a joint set: this one has "
                            f"{r.num_joints} joints, the first has {num_joints}", r.ann_id)
    for e in entries:
        if len(e["vis"]) != num_joints:
            raise DataError(path or "<split entries>", f"entry of image {e['image_id']} has "
                            f"{len(e['vis'])} visibility values, the records have {num_joints} joints",
                            e["image_id"])
    vis = np.asarray([r.visibility for r in records], dtype=np.float32).reshape(n, num_joints)  # (N, J)
    rec_img = np.fromiter((r.image_id for r in records), dtype=np.int64, count=n)   # (N,)
    rec_box = np.asarray([r.box for r in records], dtype=np.float64).reshape(n, 4)  # (N, 4)
    ent_img = np.fromiter((e["image_id"] for e in entries), dtype=np.int64, count=m)  # (M,)
    ent_box = np.asarray([e["box"] for e in entries], dtype=np.float64).reshape(m, 4)  # (M, 4)
    ent_vis = np.asarray([e["vis"] for e in entries], dtype=np.float32).reshape(m, num_joints)

    # Join entries with the records of their image. A stable sort keeps each image's records in
    # input order, so the first box match of an entry is the first in ``records`` order.
    order = np.argsort(rec_img, kind="stable")
    lo = np.searchsorted(rec_img[order], ent_img, side="left")   # (M,)
    hi = np.searchsorted(rec_img[order], ent_img, side="right")  # (M,)
    count = hi - lo
    pair_ent = np.repeat(np.arange(m), count)                                        # (P,)
    offset = np.arange(len(pair_ent)) - np.repeat(np.cumsum(count) - count, count)  # rank in image
    pair_rec = order[np.repeat(lo, count) + offset]                                 # (P,)
    close = np.all(np.abs(rec_box[pair_rec] - ent_box[pair_ent]) <= tol, axis=1)

    # First matching record per entry.
    matched_ent, first = np.unique(pair_ent[close], return_index=True)
    matched_rec = pair_rec[close][first]
    # Entries are applied in file order, so for a record hit twice the last entry wins.
    last_rec, last_pos = np.unique(matched_rec[::-1], return_index=True)
    winners = matched_ent[::-1][last_pos]
    new_vis = vis.copy()
    new_vis[last_rec] = ent_vis[winners]

    unmatched = np.setdiff1d(np.arange(m), matched_ent)
    report = SplitReport(
        path=path, entries=m, matched=len(matched_ent), unmatched=len(unmatched),
        unmatched_image_ids=tuple(int(i) for i in ent_img[unmatched[:num_reported]]),
        records=n, untouched=n - len(last_rec), rematched=len(matched_rec) - len(last_rec))
    if report.unmatched:
        logger.warning("%s: %d of %d split entries matched no record (tolerance %.1f px; first image ids: %s)",
                       path or "split", report.unmatched, m, tol,
                       ", ".join(map(str, report.unmatched_image_ids)))
    if report.untouched:
        logger.info("%s: %d of %d records matched no split entry and keep their full annotation",
                    path or "split", report.untouched, n)

    out = [dataclasses.replace(r, box=r.box.copy(), keypoints=r.keypoints.copy(), visibility=new_vis[i])
           for i, r in enumerate(records)]
    return out, report


# ----------------------------------------------------------------------------------------------
# Image-id lists (the 25-images-per-species label lists, §3.3)
# ----------------------------------------------------------------------------------------------

def load_id_list(path: str | os.PathLike) -> list[int]:
    """A JSON list of integer ids (e.g. ``label_list/annotation_list_25.json``)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON list of ids, got {type(data).__name__}")
    for i, v in enumerate(data):
        if not _is_int(v):
            raise DataError(path, f"entry {i} is not an integer id: {v!r:.40}")
    return list(data)


def filter_by_image_ids(records: Sequence[Record], ids: Iterable[int]) -> list[Record]:
    """The records whose image id is listed, in their original order (same objects)."""
    wanted = {int(i) for i in ids}
    kept = [r for r in records if r.image_id in wanted]
    missing = len(wanted - {r.image_id for r in kept})
    if missing:
        logger.warning("%d of %d listed image ids have no record", missing, len(wanted))
    return kept


# ----------------------------------------------------------------------------------------------
# Random-ratio sampling (§3.5)
# ----------------------------------------------------------------------------------------------

def sample_by_ratio(pools: Sequence[Sequence[Record]], ratio: float,
                    seed: int = 2) -> tuple[list[Record], list[Record]]:
    """Per-annotation random labeled subset of pooled datasets (SPEC §3.5).

    The pools are concatenated in the given order (AP-10K, AnimalPose[, TigDog]); with
    ``N`` records in all, ``k = int(N * ratio)`` indices are drawn as
    ``random.seed(seed); random.sample(range(N), k)`` would draw them (a private
    ``random.Random(seed)`` gives the same draws without touching the global state).

    Returns ``(labeled, unlabeled)``: the drawn records and the rest, both in pool order.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sample ratio must be in [0, 1], got {ratio}")
    pooled = [r for pool in pools for r in pool]
    n = len(pooled)
    drawn = np.zeros(n, dtype=bool)
    drawn[random.Random(seed).sample(range(n), int(n * ratio))] = True
    labeled = [r for r, d in zip(pooled, drawn) if d]
    unlabeled = [r for r, d in zip(pooled, drawn) if not d]
    return labeled, unlabeled


# ----------------------------------------------------------------------------------------------
# Generating missing-joint splits (§3.3)
# ----------------------------------------------------------------------------------------------

def generate_missing_joint_split(records: Sequence[Record], families: Mapping[str, Sequence[int]],
                                 shared: Sequence[int], seed: int) -> list[dict]:
    """A synthetic split: every record keeps one family's joints plus the shared ones (§3.3).

    Each record draws one family uniformly at random (NumPy generator seeded with ``seed``); its
    split visibility is ``annotated AND (joint in family OR joint shared)`` as 0/1. Entries use
    the split-file format with the record's box, ready for :func:`write_split_file` and
    :func:`apply_split`.
    """
    if not families:
        raise ValueError("at least one joint family is needed")
    if not records:
        return []
    num_joints = records[0].num_joints
    keep = np.zeros((len(families), num_joints), dtype=bool)  # (F, J) joints each family keeps
    for f, (name, joints) in enumerate(families.items()):
        joints = list(joints)
        if any(not 0 <= j < num_joints for j in joints):
            raise ValueError(f"family {name!r} has joints outside [0, {num_joints}): {joints}")
        keep[f, joints] = True
    if any(not 0 <= j < num_joints for j in shared):
        raise ValueError(f"shared joints outside [0, {num_joints}): {list(shared)}")
    keep[:, list(shared)] = True

    annotated = np.stack([r.visibility for r in records]) > 0                # (N, J)
    family = np.random.default_rng(seed).integers(len(families), size=len(records))  # (N,)
    vis = (annotated & keep[family]).astype(np.int64)                        # (N, J)
    return [{"image_id": int(r.image_id), "vis": v, "box": [float(b) for b in r.box]}
            for r, v in zip(records, vis.tolist())]
