"""Labeled and unlabeled training sets of each setting (SPEC §3.4), from the config.

| DATASET.LABELED    | labeled                                               | unlabeled           |
|--------------------|-------------------------------------------------------|---------------------|
| split              | all train records of the source, split file applied   | all train records   |
| label_list_split   | records of the listed images, split file applied      | all train records   |
| ratio              | seeded sample of the pooled sources (§3.5)            | pool minus labeled  |
| all                | every train record (supervised training)              | every train record  |

Sources are converted to the configured joint set (a union) by their maps (§2.4). With
DATASET.TRAIN_FILE set, the train records come from that one file instead, already in the joint
set's order (a union built by ``tools/build_union.py``), pooled per ``from`` source.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from freenet.data.coco import DataLayout, load_coco_records, to_union
from freenet.data.records import Record
from freenet.data.splits import apply_split, filter_by_image_ids, load_id_list, load_split_file, sample_by_ratio
from freenet.config import ConfigError
from freenet.errors import DataError
from freenet.joints import JointSet, load_joint_set

log = logging.getLogger(__name__)

LABELED_MODES = ("split", "label_list_split", "ratio", "all")


@dataclass
class TrainingSets:
    labeled: list[Record]
    unlabeled: list[Record]
    notes: list[str]


def resolve_data_file(path: str, data_root: str | os.PathLike, what: str) -> Path:
    """A split / label-list file: as given (absolute or relative to the working directory), else
    relative to the data root. A missing file is an error that says where it was looked for."""
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates.append(Path(data_root) / path)
    for c in candidates:
        if c.is_file():
            return c
    tried = " or ".join(str(c) for c in candidates)
    raise DataError(path, f"{what} not found (looked for {tried}). The authors' files are in the FreeNet "
                          "repository's info/ folder (copy it into the data root); `python tools/make_splits.py` "
                          "generates new ones.")


def load_sources(layout: DataLayout, sources, split: str, joint_set: JointSet, check_images: bool = True
                 ) -> list[list[Record]]:
    """One record list per source dataset in ``joint_set``'s order.

    A source whose files are written in another set is mapped onto ``joint_set`` when that is a
    union with a map from it (§2.4); otherwise the file is read in ``joint_set`` itself, its joints
    matched by name (so the MMPose-order AnimalPose files and ``animalpose_mmpose`` agree, §2.2).
    """
    pools = []
    for source in sources:
        file_set = layout.spec(source).joint_set
        if file_set != joint_set.name and source in joint_set.sources:
            pools.append(to_union(layout.load(source, split, check_images=check_images), joint_set, source))
            continue
        file_joints = load_joint_set(file_set).num_joints
        if file_joints != joint_set.num_joints:
            raise DataError(layout.annotation_file(source, split),
                            f"has {file_joints} joints ('{file_set}') but the joint set '{joint_set.name}' has "
                            f"{joint_set.num_joints} and no map from '{source}'")
        pools.append(layout.load(source, split, joint_set, check_images=check_images))
    return pools


def load_train_file(ann_file: str | os.PathLike, image_dir: str | os.PathLike | None, joint_set: JointSet,
                    check_images: bool = True) -> tuple[list[str], list[list[Record]]]:
    """DATASET.TRAIN_FILE: ``(source names, one record list per source)``.

    The file is already in ``joint_set``'s order. Records are pooled per ``from`` source in order
    of first appearance (images by ascending id, §3.2), so ratio sampling pools by source as §3.5
    does; annotations without ``from`` form one pool named after the file. Image file names are
    relative to ``image_dir`` (default: the file's folder).
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(ann_file, "training annotation file (DATASET.TRAIN_FILE) not found")
    records = load_coco_records(ann_file, image_dir or ann_file.parent, joint_set, source=ann_file.stem,
                                check_images=check_images)
    pools: dict[str, list[Record]] = {}
    for record in records:
        pools.setdefault(record.source, []).append(record)
    return list(pools), list(pools.values())


def build_training_sets(dataset_cfg, joint_set: JointSet, seed: int, check_images: bool = True) -> TrainingSets:
    """The two record lists of the configured setting (``dataset_cfg`` = ``cfg.DATASET``); a setting
    that leaves no labeled record is a :class:`ConfigError` that says how each list came about."""
    sets = _training_sets(dataset_cfg, joint_set, seed, check_images)
    if not sets.labeled:
        raise ConfigError(f"no labeled training records (DATASET.LABELED {dataset_cfg.LABELED}): "
                          + "; ".join(sets.notes))
    return sets


def _training_sets(dataset_cfg, joint_set: JointSet, seed: int, check_images: bool) -> TrainingSets:
    mode = dataset_cfg.LABELED
    if mode not in LABELED_MODES:
        raise ValueError(f"DATASET.LABELED must be one of {LABELED_MODES}, got {mode!r}")
    if dataset_cfg.TRAIN_FILE:
        sources, pools = load_train_file(dataset_cfg.TRAIN_FILE, dataset_cfg.TRAIN_IMAGE_DIR, joint_set, check_images)
    else:
        sources = list(dataset_cfg.SOURCES)
        pools = load_sources(DataLayout(dataset_cfg.ROOT), sources, dataset_cfg.TRAIN_SET, joint_set, check_images)
    everything = [r for pool in pools for r in pool]
    notes = ["train records per source: " + ", ".join(f"{s} {len(p)}" for s, p in zip(sources, pools))]

    if mode == "ratio":
        labeled, unlabeled = sample_by_ratio(pools, dataset_cfg.SAMPLE_RATIO, seed)
        notes.append(f"random {dataset_cfg.SAMPLE_RATIO:g} of the pool labeled (seed {seed}): {len(labeled)} labeled, "
                     f"{len(unlabeled)} unlabeled")
        return TrainingSets(labeled, unlabeled, notes)
    if mode == "all":
        return TrainingSets(everything, everything, notes)

    labeled = everything
    if mode == "label_list_split":
        list_file = resolve_data_file(dataset_cfg.LABEL_LIST, dataset_cfg.ROOT, "label list")
        labeled = filter_by_image_ids(labeled, load_id_list(list_file), list_file)
        notes.append(f"{list_file}: {len(labeled)} records of the listed images")
    split_file = resolve_data_file(dataset_cfg.SPLIT_FILE, dataset_cfg.ROOT, "missing-joint split file")
    labeled, report = apply_split(labeled, load_split_file(split_file, joint_set.num_joints), path=split_file)
    notes.append(str(report))
    return TrainingSets(labeled, everything, notes)
