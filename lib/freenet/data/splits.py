"""Labeled subsets: missing-joint split files, image-id lists, seeded ratio sampling (SPEC §3.3–§3.5).

A *split file* (§3.3) is a JSON list of ``{"image_id", "vis": [J ints 0/1], "box": [x, y, w, h]}``.
Applying it hides joints of matched instances (their visibility is replaced, coordinates stay).
The FreeNet authors ship such files for AP-10K; :func:`generate_missing_joint_split` makes new
ones for any dataset and seed, with the authors' settings available as :data:`SPLIT_PRESETS`
(families and shared joints may be written as joint names, :func:`parse_family`).

A *label list* is a JSON list of image ids (``label_list/annotation_list_{N}.json``: N images per
species); :func:`sample_per_category` draws new ones, nested across N.

:func:`sample_by_ratio` is the per-annotation random labeled subset of the mixed-dataset scripts
(§3.4, §3.5); with the default seed it reproduces the authors' shipped id lists exactly, and
:func:`ratio_id_files` puts a drawn subset in their ``random_{ratio}_img_{ids,ann_ids}.json`` form.

``tools/make_splits.py`` is the command line over these functions.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from freenet.data.coco import load_json
from freenet.data.records import Record
from freenet.errors import DataError, is_int, is_number
from freenet.fileio import write_json_atomic
from freenet.joints import map_by_name, normalize_name

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
        if not is_int(image_id):
            raise DataError(path, f"{where}: 'image_id' must be an integer", image_id)
        vis, box = e["vis"], e["box"]
        if not (isinstance(vis, list) and len(vis) == num_joints and all(is_int(v) and 0 <= v <= 2 for v in vis)):
            raise DataError(path, f"{where}: 'vis' must be {num_joints} integers in {{0, 1, 2}}", image_id)
        if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            raise DataError(path, f"{where}: 'box' must be 4 numbers [x, y, w, h]", image_id)
        entries.append({"image_id": image_id, "vis": list(vis), "box": [float(v) for v in box]})
    return entries


def _json_number(v: float) -> int | float:
    """Integral values as ints (the authors' files hold integer boxes), others rounded to 1e-3 px."""
    v = round(float(v), 3)
    return int(v) if v.is_integer() else v


def write_split_file(path: str | os.PathLike, entries: Sequence[Mapping]) -> None:
    """Write entries in the split-file format (§3.3), atomically (temp file + rename)."""
    write_json_atomic(path, [{"image_id": int(e["image_id"]), "vis": [int(v) for v in e["vis"]],
                              "box": [_json_number(v) for v in e["box"]]} for e in entries])


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
    stay in the labeled set unmasked). Unmatched entries are logged as one counted warning; an
    entry list of which no entry matches any record is a :class:`DataError` naming ``path`` (the
    wrong file for these records: nothing would be masked).

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
    if n and m and not len(matched_ent):
        # Nothing masked: training would run on the full labels, not the missing-joint setting asked for.
        raise DataError(path or "<split entries>", f"none of its {m} entries matches any of the {n} records (an entry "
                        f"matches a record of its image id whose box [x, y, w, h] is within {tol:g} px on every "
                        f"coordinate; {np.unique(ent_img[count > 0]).size} of the entries' {np.unique(ent_img).size} "
                        "image ids have a record at all): is it the split file of this dataset and split?")
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
        if not is_int(v):
            raise DataError(path, f"entry {i} is not an integer id: {v!r:.40}")
    return list(data)


def filter_by_image_ids(records: Sequence[Record], ids: Iterable[int], path: str | os.PathLike = "",
                        num_reported: int = 10) -> list[Record]:
    """The records whose image id is listed, in their original order (same objects).

    Listed ids without a record are logged as one counted warning naming ``path``, the list's file.
    """
    path = str(path or "label list")
    wanted = {int(i) for i in ids}
    kept = [r for r in records if r.image_id in wanted]
    missing = sorted(wanted - {r.image_id for r in kept})
    if missing:
        logger.warning("%s: %d of %d listed image ids have no record (first: %s)", path, len(missing), len(wanted),
                       ", ".join(map(str, missing[:num_reported])))
    return kept


def write_id_list(path: str | os.PathLike, ids: Iterable[int]) -> None:
    """A JSON list of integer ids (the label-list format), written atomically."""
    write_json_atomic(path, [int(i) for i in ids])


# ----------------------------------------------------------------------------------------------
# N images per category (the label lists ``annotation_list_{N}.json``, §3.3)
# ----------------------------------------------------------------------------------------------

def image_categories(records: Sequence[Record]) -> dict[int, int]:
    """Category of each image: that of its first record (an image with several species counts once).

    Records come in loading order (§3.2: images by ascending id, annotations in file order), so
    "first" is the image's first kept annotation in the file.
    """
    categories: dict[int, int] = {}
    for r in records:
        categories.setdefault(int(r.image_id), int(r.category_id))
    return categories


def sample_per_category(records: Sequence[Record], sizes: Sequence[int], seed: int = 2,
                        nested: bool = True) -> dict[int, list[int]]:
    """Image-id lists with ``n`` images per category for each ``n`` in ``sizes`` (SPEC §3.3).

    The category of an image is :func:`image_categories`'. A category with fewer than ``n``
    images contributes all of them. Lists are grouped by category (ascending id), each category's
    images in drawn order, like the authors' ``label_list/annotation_list_{N}.json``.

    ``nested=True`` draws one permutation per category (NumPy generator seeded with ``seed``) and
    takes its first ``n`` images, so every smaller list is a subset of every larger one: growing
    the labeled set keeps the images already labeled. ``nested=False`` draws each size on its own
    (generator seeded with ``[seed, n]``), as the authors' lists were (theirs overlap only partly).

    Returns ``{n: [image ids]}`` in the order of ``sizes``.
    """
    if any(int(n) < 1 for n in sizes):
        raise ValueError(f"images per category must be >= 1, got {list(sizes)}")
    per_category: dict[int, list[int]] = {}
    for image_id, category in image_categories(records).items():
        per_category.setdefault(category, []).append(image_id)
    categories = sorted(per_category)

    def draw(rng: np.random.Generator) -> dict[int, list[int]]:
        return {c: [per_category[c][j] for j in rng.permutation(len(per_category[c]))] for c in categories}

    lists: dict[int, list[int]] = {}
    shuffled = draw(np.random.default_rng(seed)) if nested else None
    for n in sizes:
        n = int(n)
        order = shuffled if nested else draw(np.random.default_rng([seed, n]))
        lists[n] = [i for c in categories for i in order[c][:n]]
    return lists


# ----------------------------------------------------------------------------------------------
# Joint lists written by people (command lines): indices, ranges or names
# ----------------------------------------------------------------------------------------------

def parse_joint_list(text: str, joint_names: Sequence[str] | None = None,
                     num_joints: int | None = None) -> list[int]:
    """``"5,6,7"``, ``"5-10"`` or ``"L_F_hip,L_F_knee"`` -> joint indices, in the order given.

    Names are those of the joint set (``joint_names``), compared case-insensitively with spaces,
    '-' and '.' read as '_', or other datasets' names for them (the alias table: ``L_F_Elbow``
    of MMPose's AnimalPose is ``L_F_hip``). Indices are checked against ``num_joints`` (default:
    the number of names). Repeats are dropped. Raises ``ValueError`` naming the item that does not
    resolve.
    """
    num_joints = len(joint_names) if num_joints is None and joint_names is not None else num_joints
    by_name = {normalize_name(n): j for j, n in enumerate(joint_names or ())}
    out: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item.isdigit():
            indices = [int(item)]
        elif "-" in item and all(p.strip().isdigit() for p in item.split("-", 1)):
            lo, hi = (int(p) for p in item.split("-", 1))
            if hi < lo:
                raise ValueError(f"joint range '{item}' runs backwards")
            indices = list(range(lo, hi + 1))
        elif normalize_name(item) in by_name:
            indices = [by_name[normalize_name(item)]]
        elif joint_names and (alias := int(map_by_name([item], joint_names)[0])) >= 0:   # another dataset's name
            indices = [alias]
        else:
            known = ", ".join(joint_names) if joint_names else "none (no joint set given: use indices)"
            raise ValueError(f"unknown joint '{item}'; joint names: {known}")
        for j in indices:
            if num_joints is not None and not 0 <= j < num_joints:
                raise ValueError(f"joint index {j} (from '{item}') is outside [0, {num_joints})")
            if j not in out:
                out.append(j)
    return out


def parse_family(text: str, joint_names: Sequence[str] | None = None,
                 num_joints: int | None = None) -> tuple[str, list[int]]:
    """``"front=L_F_hip,L_F_knee"`` or ``"front=5-10"`` -> ``("front", [5, ...])``."""
    name, sep, joints = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"a family is NAME=JOINTS (e.g. front=5,6,7), got '{text}'")
    indices = parse_joint_list(joints, joint_names, num_joints)
    if not indices:
        raise ValueError(f"family '{name.strip()}' lists no joints")
    return name.strip(), indices


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
                                 shared: Sequence[int], seed: int, *, return_families: bool = False):
    """A synthetic split: every record keeps one family's joints plus the shared ones (§3.3).

    Each record draws one family uniformly at random (NumPy generator seeded with ``seed``); its
    split visibility is ``annotated AND (joint in family OR joint shared)`` as 0/1. Entries use
    the split-file format with the record's box, ready for :func:`write_split_file` and
    :func:`apply_split`. With ``return_families`` the family name drawn for each entry comes
    back too, as ``(entries, names)``.
    """
    if not families:
        raise ValueError("at least one joint family is needed")
    if not records:
        return ([], []) if return_families else []
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
    entries = [{"image_id": int(r.image_id), "vis": v, "box": [float(b) for b in r.box]}
               for r, v in zip(records, vis.tolist())]
    if return_families:
        names = list(families)
        return entries, [names[f] for f in family.tolist()]
    return entries


# ----------------------------------------------------------------------------------------------
# The authors' random-subset id files (``random_{ratio}_img_ids.json``, ``..._img_ann_ids.json``)
# ----------------------------------------------------------------------------------------------

def collision_offsets(pools: Sequence[Sequence[Record]]) -> list[tuple[int, int]] | None:
    """Id offsets that make pooled files' image and annotation ids unique, or None if they already are.

    Pool ``k`` is shifted by the largest (shifted) image and annotation id of pools ``0..k-1``, the
    scheme of the authors' union files (AnimalPose after AP-10K, TigDog after both, §3.5; they took
    the largest ids of AP-10K's whole release, not of its train file), whose ids start at 1; a pool
    with ids below 1 (ids from 0) is shifted further, so that its smallest id lands just past that
    largest one. Returns one ``(image offset, annotation offset)`` per pool,
    the first ``(0, 0)``.
    """
    image_sets = [{int(r.image_id) for r in pool} for pool in pools]
    ann_sets = [{int(r.ann_id) for r in pool} for pool in pools]

    def disjoint(sets):
        return sum(len(s) for s in sets) == len(set().union(*sets)) if sets else True

    if disjoint(image_sets) and disjoint(ann_sets):
        return None

    def past(top, ids):     # the offset that puts every id of a later pool above ``top``
        return top + max(0, 1 - min(ids, default=1))

    offsets, top_image, top_ann = [], 0, 0
    for k, (images, anns) in enumerate(zip(image_sets, ann_sets)):
        image_offset, ann_offset = (past(top_image, images), past(top_ann, anns)) if k else (0, 0)
        offsets.append((image_offset, ann_offset))
        top_image = max([top_image] + [i + image_offset for i in images])
        top_ann = max([top_ann] + [a + ann_offset for a in anns])
    return offsets


def offset_records(records: Sequence[Record], image_offset: int, ann_offset: int) -> list[Record]:
    """Copies of ``records`` with image and annotation ids shifted (arrays shared, ids only)."""
    if not image_offset and not ann_offset:
        return list(records)
    return [dataclasses.replace(r, image_id=int(r.image_id) + image_offset, ann_id=int(r.ann_id) + ann_offset)
            for r in records]


def ratio_id_files(labeled: Sequence[Record]) -> tuple[list[int], dict[str, list[int]]]:
    """The authors' two id files for a labeled subset (SPEC §3.5).

    ``img_ids``: image ids in order of first appearance; ``img_ann_ids``: ``{str(image id):
    [annotation ids]}``, each image's ids in record order. :func:`sample_by_ratio` keeps pool order
    (images ascending within a file, later files offset past earlier ones), so both come out in
    ascending image order as in ``random_0.1_img_ann_ids.json``, whose per-image annotation ids
    follow the file's annotation order (not always ascending).
    """
    img_ann_ids: dict[str, list[int]] = {}
    for r in labeled:
        img_ann_ids.setdefault(str(int(r.image_id)), []).append(int(r.ann_id))
    return [int(k) for k in img_ann_ids], img_ann_ids


def load_img_ann_ids(path: str | os.PathLike) -> dict[int, list[int]]:
    """Read an ``*_img_ann_ids.json`` file: ``{"image id": [annotation ids]}`` -> ``{int: [int]}``."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object {{image id: [annotation ids]}}, got {type(data).__name__}")
    out: dict[int, list[int]] = {}
    for key, anns in data.items():
        if not key.lstrip("-").isdigit():
            raise DataError(path, f"key {key!r:.40} is not an image id")
        if not (isinstance(anns, list) and all(is_int(a) for a in anns)):
            raise DataError(path, f"image {key}: expected a list of integer annotation ids", int(key))
        out[int(key)] = list(anns)
    return out
