"""Validate a COCO keypoint file and describe it: the checks behind ``tools/check_annotations.py``.

The training loader (:func:`freenet.data.coco.load_coco_records`) stops at the first bad
annotation; this module reads the whole file and reports *every* problem, each with the file, the
image or annotation id and the field, so a converted dataset can be fixed in one pass:

    report = check_coco_file("my_train.json", image_dirs=["my_images/"])
    print(report.format())            # errors, warnings, notes, then statistics
    report.errors                     # list[Issue]; exit code 1 of the tool when non-empty

Levels: an *error* breaks training or evaluation or silently corrupts labels (duplicate ids,
unknown image, keypoint count, visibility outside {0, 1, 2}, a labeled joint at (0, 0), a missing
or empty box, a missing or unreadable image); a *warning* is suspicious but usable (a joint or box
outside the image, ``num_keypoints`` disagreeing with the labels); a *note* (level "info") is for
the record (images without annotations, instances the loader drops).

Statistics: images, annotations and the instances training keeps (SPEC §3.2: box with w > 0 and
h > 0 and a non-zero keypoint value), per category and per source (the union files' ``from``
field), and labeled joints per joint name (visibility > 0, count and fraction of the kept
instances), per source when the file has sources.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from freenet.data.coco import file_joint_order, load_coco_json, normalize_source, reorder_joints
from freenet.errors import DataError, is_int, is_number
from freenet.joints import JointSet, load_joint_set

ERROR, WARNING, INFO = "error", "warning", "info"

# Every kind of issue with its level and what it means (the report's vocabulary).
KINDS: dict[str, tuple[str, str]] = {
    "file_missing": (ERROR, "the annotation file does not exist"),
    "malformed_json": (ERROR, "the file is not valid JSON"),
    "not_an_object": (ERROR, "the top level is not a JSON object"),
    "missing_section": (ERROR, "'images' or 'annotations' is missing or not a list"),
    "missing_categories": (WARNING, "no 'categories' list: category ids and joint names cannot be checked"),
    "bad_image_entry": (ERROR, "an image entry is not an object with 'id' and 'file_name'"),
    "duplicate_image_id": (ERROR, "two images share an id"),
    "duplicate_file_name": (WARNING, "two image entries name the same file"),
    "image_size_missing": (WARNING, "image has no positive 'width'/'height' (evaluation needs them)"),
    "bad_category_entry": (ERROR, "a category entry is not an object with an 'id'"),
    "duplicate_category_id": (ERROR, "two categories share an id"),
    "category_keypoints_mismatch": (WARNING, "categories list another joint count than every annotation has"),
    "category_joint_order": (ERROR, "categories list the same joints in different orders"),
    "joint_names_unknown": (WARNING, "the categories' joint names are not the joint set's (file order is used)"),
    "joints_reordered": (INFO, "the categories list the joint set's joints in another order (read by name)"),
    "bad_annotation_entry": (ERROR, "an annotation is not an object with an 'id'"),
    "duplicate_annotation_id": (ERROR, "two annotations share an id"),
    "unknown_image": (ERROR, "annotation points at an image id not in 'images'"),
    "unknown_category": (ERROR, "annotation has no category id or one not in 'categories'"),
    "keypoint_values": (ERROR, "'keypoints' is not a list of numbers"),
    "keypoint_count": (ERROR, "'keypoints' length is not 3 x the joint count"),
    "visibility_value": (ERROR, "a visibility value outside {0, 1, 2}"),
    "labeled_at_origin": (ERROR, "a joint with visibility > 0 at (0, 0), the placeholder of unlabeled joints"),
    "keypoint_outside_image": (WARNING, "a labeled joint outside the image"),
    "num_keypoints_mismatch": (WARNING, "'num_keypoints' differs from the number of joints with visibility > 0"),
    "bbox_missing": (ERROR, "annotation has no 'bbox'"),
    "bbox_malformed": (ERROR, "'bbox' is not 4 numbers [x, y, w, h]"),
    "bbox_empty": (ERROR, "'bbox' has w <= 0 or h <= 0 (training drops the instance)"),
    "bbox_outside_image": (WARNING, "'bbox' extends past the image (more than 1 px)"),
    "bbox_corner_format": (WARNING, "boxes look like [x1, y1, x2, y2] rather than COCO [x, y, w, h]"),
    "image_missing": (ERROR, "image file not found"),
    "image_unreadable": (ERROR, "image file cannot be decoded (corrupt or truncated)"),
    "image_truncated": (WARNING, "image decodes but its file lacks the end marker (truncated?)"),
    "image_size_mismatch": (ERROR, "decoded image size differs from the file's width/height"),
    "images_not_checked": (INFO, "image files were not opened"),
    "image_without_annotations": (INFO, "image has no annotation"),
    "instance_not_kept": (INFO, "annotation without keypoints: training does not use it"),
}

BOX_TOLERANCE = 1.0  # px a box may stick out of the image before it is reported (rounding)


@dataclass(frozen=True)
class Issue:
    """One problem: its kind (see :data:`KINDS`), where it is, and what is wrong."""

    kind: str
    file: str
    message: str
    image_id: object = None
    ann_id: object = None
    field: str = ""

    @property
    def level(self) -> str:
        return KINDS[self.kind][0]

    def __str__(self) -> str:
        where = [f"annotation id {self.ann_id}" if self.ann_id is not None else "",
                 f"image id {self.image_id}" if self.image_id is not None else "",
                 f"field '{self.field}'" if self.field else ""]
        return f"{self.file} ({', '.join(w for w in where if w) or 'file'}): {self.message}"


@dataclass
class CheckReport:
    """Everything :func:`check_coco_file` found, and the file's statistics."""

    file: str
    issues: list[Issue] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def at(self, level: str) -> list[Issue]:
        return [i for i in self.issues if i.level == level]

    @property
    def errors(self) -> list[Issue]:
        return self.at(ERROR)

    @property
    def warnings(self) -> list[Issue]:
        return self.at(WARNING)

    def kinds(self, level: str | None = None) -> Counter:
        return Counter(i.kind for i in self.issues if level is None or i.level == level)

    @property
    def exit_code(self) -> int:
        """1 when there is an error, 0 with only warnings and notes."""
        return 1 if self.errors else 0

    def to_dict(self) -> dict:
        return {"file": self.file,
                "summary": {level: len(self.at(level)) for level in (ERROR, WARNING, INFO)},
                "issues": [{"level": i.level, **asdict(i)} for i in self.issues],
                "stats": self.stats}

    def format(self, max_per_kind: int = 5) -> str:
        """Human-readable report: issues grouped by level and kind (``max_per_kind`` shown each), then statistics."""
        lines = [f"{self.file}: {len(self.errors)} errors, {len(self.warnings)} warnings, {len(self.at(INFO))} notes"]
        for level, title in ((ERROR, "ERRORS"), (WARNING, "WARNINGS"), (INFO, "NOTES")):
            kinds = self.kinds(level)
            if not kinds:
                continue
            lines.append(f"{title}")
            for kind, count in kinds.items():
                lines.append(f"  [{kind}] x{count}: {KINDS[kind][1]}")
                shown = [i for i in self.issues if i.kind == kind][:max_per_kind]
                lines += [f"    {i}" for i in shown]
                if count > len(shown):
                    lines.append(f"    ... and {count - len(shown)} more (--json writes them all)")
        if self.stats:
            lines.append(format_stats(self.stats))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Joint names and image files
# ----------------------------------------------------------------------------------------------

def file_joint_names(data: dict, num_joints: int, joint_set: JointSet | None = None) -> list[str]:
    """Names of a file's ``num_joints`` joints: the joint set's, else a category's ``keypoints``
    list of that length, else the bundled joint set of that size (the union files list only the
    17 AP-10K names in their categories), else ``joint_0``, ``joint_1``, ..."""
    if joint_set is not None and joint_set.num_joints == num_joints:
        return list(joint_set.joints)
    for cat in data.get("categories") or []:
        names = cat.get("keypoints") if isinstance(cat, dict) else None
        if isinstance(names, list) and len(names) == num_joints and all(isinstance(n, str) for n in names):
            return list(names)
    bundled = {17: "ap10k", 19: "tigdog", 20: "animalpose", 21: "union21", 24: "union24"}.get(num_joints)
    return list(load_joint_set(bundled).joints) if bundled else [f"joint_{j}" for j in range(num_joints)]


def find_image(file_name: str, image_dirs: Sequence[str | os.PathLike]) -> Path | None:
    """The first ``dir / file_name`` that exists, or None (union files draw on several folders)."""
    for d in image_dirs:
        p = Path(d) / file_name
        if p.is_file():
            return p
    return None


def file_complete(data: bytes) -> bool:
    """False when a JPEG or PNG file stops before its end marker (other formats: True).

    Some decoders return a partly grey picture for a truncated file instead of failing, so the
    end is checked on the bytes. JPEG: the marker segments are walked past any embedded
    thumbnail (whose own end marker would otherwise count) to the first scan, and an end-of-image
    marker must follow it (data appended after it, like a phone's motion-photo video, is fine).
    PNG: the IEND chunk must be there.
    """
    if data.startswith(b"\x89PNG"):
        return b"IEND\xaeB`\x82" in data
    if not data.startswith(b"\xff\xd8"):
        return True
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False                       # lost in the segments: broken header
        marker = data[pos + 1]
        if marker == 0xFF:                     # fill byte
            pos += 1
        elif marker == 0xDA:                   # start of scan: entropy-coded data, then (more scans and) EOI
            return data.find(b"\xff\xd9", pos) != -1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2                           # markers without a length
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


def inspect_image(path: Path) -> tuple[str, tuple[int, int] | None]:
    """Decode one image file. Returns (problem kind or "", (width, height) or None)."""
    try:
        data = path.read_bytes()
    except OSError:
        return "image_unreadable", None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        return "image_unreadable", None
    size = (image.shape[1], image.shape[0])
    return ("" if file_complete(data) else "image_truncated"), size


# ----------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------

def _is_id(v) -> bool:
    """COCO ids are integers, as training reads them (it sorts, offsets and stores them as ints):
    a string or float id is an error here, as it is when the file loads."""
    return is_int(v)


def _joint_list(names: Sequence[str], joints: Iterable[int], values=None) -> str:
    joints = list(joints)
    text = ", ".join(f"{j} {names[j]}" + (f"={values[j]:g}" if values is not None else "") for j in joints[:6])
    return text + (f" and {len(joints) - 6} more" if len(joints) > 6 else "")


def check_coco_file(path: str | os.PathLike, image_dirs: Sequence[str | os.PathLike] | None = None,
                    joint_set: JointSet | None = None, *, check_images: bool = True, workers: int = 8,
                    progress: bool = False) -> CheckReport:
    """Validate a COCO keypoint file and compute its statistics (see the module docstring).

    Args:
        path: the JSON file.
        image_dirs: folders ``file_name`` is relative to, tried in order (union files: the source
            datasets' folders). Without them, images are not opened.
        joint_set: the joint set the file is written in; its joint count is what every annotation
            must have. Without it, a category's ``keypoints`` list sets the count (or, when every
            annotation agrees on another count, that count, with one warning).
        check_images: decode every image (in ``workers`` threads; ``progress`` shows a bar).

    Never raises on bad content: every problem becomes an :class:`Issue`.
    """
    path = str(path)
    report = CheckReport(path)
    add = report.issues.append
    if not Path(path).is_file():
        add(Issue("file_missing", path, "file not found"))
        return report
    try:
        data = load_coco_json(path)
    except DataError as e:
        add(Issue("not_an_object" if "top level" in str(e) else "malformed_json", path, str(e).split(": ", 1)[-1]))
        return report
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            add(Issue("missing_section", path, f"'{key}' is {'missing' if key not in data else 'not a list'}",
                      field=key))
    if report.errors:
        return report

    images = _check_images(path, data["images"], add)
    categories = _check_categories(path, data.get("categories"), add)
    if joint_set is not None:
        data = _joint_order(path, data, joint_set, add)
    if check_images and image_dirs:
        _decode_images(path, images, image_dirs, add, workers, progress)
    elif images:
        add(Issue("images_not_checked", path, "image files were not opened ("
                  + ("--no-images" if image_dirs else "no image folder given") + ")"))
    report.stats = _check_annotations(path, data, images, categories, joint_set, add)
    return report


@dataclass
class _Image:
    entry: dict
    size: tuple[float, float] | None  # (width, height) from the file, else the decoded size


def _check_images(path, entries, add) -> dict:
    images: dict = {}
    seen_files: dict[str, object] = {}
    for pos, img in enumerate(entries):
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
            add(Issue("bad_image_entry", path, f"images[{pos}] needs an integer 'id' and a 'file_name': {img!r:.80}",
                      img.get("id") if isinstance(img, dict) and _is_id(img.get("id")) else None, field="images"))
            continue
        img_id = img["id"]
        if img_id in images:
            add(Issue("duplicate_image_id", path, f"images[{pos}] repeats image id {img_id} "
                      f"(files {images[img_id].entry['file_name']!r} and {img['file_name']!r})", img_id, field="id"))
            continue
        if img["file_name"] in seen_files:
            add(Issue("duplicate_file_name", path, f"file {img['file_name']!r} is also image id "
                      f"{seen_files[img['file_name']]}", img_id, field="file_name"))
        seen_files.setdefault(img["file_name"], img_id)
        w, h = img.get("width"), img.get("height")
        size = (float(w), float(h)) if is_number(w) and is_number(h) and w > 0 and h > 0 else None
        if size is None:
            add(Issue("image_size_missing", path, f"width {w!r}, height {h!r}", img_id, field="width/height"))
        images[img_id] = _Image(img, size)
    return images


def _check_categories(path, entries, add) -> dict | None:
    if not isinstance(entries, list):
        add(Issue("missing_categories", path, "no 'categories' list", field="categories"))
        return None
    categories: dict = {}
    for pos, cat in enumerate(entries):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")):
            add(Issue("bad_category_entry", path, f"categories[{pos}] has no 'id': {cat!r:.80}", field="categories"))
        elif cat["id"] in categories:
            add(Issue("duplicate_category_id", path, f"categories[{pos}] repeats category id {cat['id']}",
                      field="categories"))
        else:
            categories[cat["id"]] = cat
    return categories


def _decode_images(path, images: dict, image_dirs, add, workers: int, progress: bool) -> None:
    ids = list(images)
    found = {i: find_image(images[i].entry["file_name"], image_dirs) for i in ids}
    for i in ids:
        if found[i] is None:
            tried = ", ".join(str(Path(d) / images[i].entry["file_name"]) for d in image_dirs)
            add(Issue("image_missing", path, f"image file not found (tried {tried})", i, field="file_name"))
    present = [i for i in ids if found[i] is not None]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # OpenCV decodes without the GIL
        results = pool.map(lambda i: inspect_image(found[i]), present)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(present), desc="decoding images", unit="img")
        for i, (problem, size) in zip(present, results):
            name = found[i]
            if problem == "image_unreadable":
                add(Issue(problem, path, f"cannot decode {name} (corrupt, truncated or not an image)", i,
                          field="file_name"))
            elif problem:
                add(Issue(problem, path, f"{name} decodes but has no end-of-image marker", i, field="file_name"))
            if size is None:
                continue
            declared = images[i].size
            if declared is None:
                images[i].size = (float(size[0]), float(size[1]))
            elif declared != (float(size[0]), float(size[1])):
                add(Issue("image_size_mismatch", path, f"{name} is {size[0]}x{size[1]} but the file says "
                          f"{declared[0]:g}x{declared[1]:g}", i, field="width/height"))


@dataclass
class _Ann:
    """The fields of one annotation that passed the structural checks."""

    ann_id: object
    image_id: object
    category_id: object
    source: str
    box: list | None        # [x, y, w, h] when well-formed with w, h > 0
    keypoints: list | None  # 3J numbers when the count is right
    kept: bool              # SPEC §3.2: usable box and a non-zero keypoint value
    num_keypoints: object = None


def _joint_order(path, data: dict, joint_set: JointSet, add) -> dict:
    """The file in the joint set's order, as training and evaluation read it; issues on the names."""
    try:
        source, problem = file_joint_order(path, data, joint_set)
    except DataError as e:
        add(Issue("category_joint_order", path, str(e).split(": ", 1)[-1], field="categories"))
        return data
    if problem:
        add(Issue("joint_names_unknown", path, problem, field="categories"))
    if source is None:
        return data
    slots = np.argsort(source).tolist()       # file joint j -> the set's joint slots[j]
    add(Issue("joints_reordered", path, f"joints listed in another order than joint set '{joint_set.name}'; "
              f"training and evaluation read them by name (file joint j -> set joint {slots}[j])",
              field="categories"))
    return reorder_joints(data, source)


def _expected_joints(path, annotations, categories, joint_set, add) -> tuple[dict, int]:
    """Joint count each category's annotations must have, and the count for anything else."""
    lengths = Counter(len(a["keypoints"]) // 3 for a in annotations if isinstance(a, dict)
                      and isinstance(a.get("keypoints"), list) and a["keypoints"] and len(a["keypoints"]) % 3 == 0)
    common = lengths.most_common(1)[0][0] if lengths else 0
    if joint_set is not None:
        return {}, joint_set.num_joints
    per_category = {cid: len(c["keypoints"]) for cid, c in (categories or {}).items()
                    if isinstance(c.get("keypoints"), list) and c["keypoints"]}
    if len(lengths) == 1 and per_category and set(per_category.values()) != {common}:
        listed = sorted(set(per_category.values()))
        add(Issue("category_keypoints_mismatch", path, f"categories list {'/'.join(map(str, listed))} joint names "
                  f"but every annotation has {common} joints (the FreeNet union files do this); checked against "
                  f"{common} (give --joints to check against a joint set)", field="categories.keypoints"))
        return {}, common
    return per_category, common


def _check_annotations(path, data, images: dict, categories: dict | None, joint_set, add) -> dict:
    annotations = data["annotations"]
    per_category_joints, default_joints = _expected_joints(path, annotations, categories, joint_set, add)
    seen: set = set()
    anns: list[_Ann] = []
    for pos, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not _is_id(ann.get("id")):
            add(Issue("bad_annotation_entry", path, f"annotations[{pos}] has no integer 'id': {ann!r:.80}",
                      field="annotations"))
            continue
        ann_id, img_id, cat_id = ann["id"], ann.get("image_id"), ann.get("category_id")
        img_id = img_id if _is_id(img_id) else repr(img_id)    # keeps a malformed id printable and hashable
        cat_id = cat_id if _is_id(cat_id) else repr(cat_id)
        if ann_id in seen:
            add(Issue("duplicate_annotation_id", path, f"annotations[{pos}] repeats annotation id {ann_id}",
                      img_id, ann_id, "id"))
            continue
        seen.add(ann_id)
        if not _is_id(ann.get("image_id")):
            add(Issue("unknown_image", path, f"'image_id' must be an integer, got {img_id}", None, ann_id, "image_id"))
        elif img_id not in images:
            add(Issue("unknown_image", path, f"image id {img_id!r} is not in 'images'", img_id, ann_id, "image_id"))
        if "category_id" in ann and not _is_id(ann["category_id"]):
            add(Issue("unknown_category", path, f"'category_id' must be an integer, got {cat_id}", img_id, ann_id,
                      "category_id"))
        elif categories is not None and cat_id not in categories:
            add(Issue("unknown_category", path, f"category id {cat_id!r} is not in 'categories'", img_id, ann_id,
                      "category_id"))

        kps = ann.get("keypoints")
        expected = per_category_joints.get(cat_id, default_joints)
        if kps is None:             # no field or null: read as no labeled joint when the file loads
            add(Issue("instance_not_kept", path, "no 'keypoints'" if "keypoints" not in ann else "'keypoints' is null",
                      img_id, ann_id, "keypoints"))
        elif not isinstance(kps, list) or not all(is_number(v) for v in kps):
            add(Issue("keypoint_values", path, f"expected a list of numbers, got {kps!r:.60}", img_id, ann_id,
                      "keypoints"))
            kps = None
        elif kps and len(kps) != 3 * expected:
            add(Issue("keypoint_count", path, f"{len(kps)} values, expected 3 x {expected} = {3 * expected}"
                      + (f" (joint set '{joint_set.name}')" if joint_set is not None else ""), img_id, ann_id,
                      "keypoints"))
            kps = None
        elif not any(v != 0 for v in kps):
            add(Issue("instance_not_kept", path, "no keypoint value is non-zero", img_id, ann_id, "keypoints"))
            kps = None

        box = ann.get("bbox")
        if box is None:
            add(Issue("bbox_missing", path, "no 'bbox'", img_id, ann_id, "bbox"))
        elif not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            add(Issue("bbox_malformed", path, f"expected [x, y, w, h], got {box!r:.60}", img_id, ann_id, "bbox"))
            box = None
        elif not (box[2] > 0 and box[3] > 0):
            add(Issue("bbox_empty", path, f"w = {box[2]:g}, h = {box[3]:g} in {box}", img_id, ann_id, "bbox"))
            box = None
        source = normalize_source(ann.get("from") or (images[img_id].entry.get("from") if img_id in images else None))
        anns.append(_Ann(ann_id, img_id, cat_id, source, box, kps, kept=box is not None and kps is not None,
                         num_keypoints=ann.get("num_keypoints")))

    sizes = np.asarray([images[a.image_id].size if a.image_id in images and images[a.image_id].size else
                        (np.nan, np.nan) for a in anns], dtype=np.float64).reshape(-1, 2)  # (A, 2) width, height
    _check_boxes(path, anns, sizes, add)
    visible = {}  # joint count -> (indices into anns, (n, J) bool labeled)
    for n in sorted({len(a.keypoints) // 3 for a in anns if a.keypoints is not None}):
        index = np.asarray([k for k, a in enumerate(anns) if a.keypoints is not None and len(a.keypoints) == 3 * n])
        names = file_joint_names(data, n, joint_set)
        visible[n] = (index, _check_keypoints(path, [anns[k] for k in index], sizes[index], names, add), names)
    _check_corner_boxes(path, anns, sizes, visible, add)

    annotated = {a.image_id for a in anns}
    for img_id in images:
        if img_id not in annotated:
            add(Issue("image_without_annotations", path, "no annotation", img_id, field="images"))
    return _statistics(images, categories, anns, visible, default_joints)


def _check_boxes(path, anns: list[_Ann], sizes: np.ndarray, add) -> None:
    """Boxes sticking out of their image by more than :data:`BOX_TOLERANCE` px (warnings)."""
    index = np.asarray([k for k, a in enumerate(anns) if a.box is not None and np.isfinite(sizes[k, 0])], dtype=int)
    if not len(index):
        return
    box = np.asarray([anns[k].box for k in index], dtype=np.float64)  # (N, 4)
    w, h = sizes[index, 0], sizes[index, 1]
    x1, y1, x2, y2 = box[:, 0], box[:, 1], box[:, 0] + box[:, 2], box[:, 1] + box[:, 3]
    outside = (x1 < -BOX_TOLERANCE) | (y1 < -BOX_TOLERANCE) | (x2 > w + BOX_TOLERANCE) | (y2 > h + BOX_TOLERANCE)
    disjoint = (x2 <= 0) | (y2 <= 0) | (x1 >= w) | (y1 >= h)
    for k in np.flatnonzero(outside):
        a = anns[index[k]]
        what = "does not overlap" if disjoint[k] else "extends past"
        add(Issue("bbox_outside_image", path, f"box {a.box} (right {x2[k]:g}, bottom {y2[k]:g}) {what} the "
                  f"{w[k]:g}x{h[k]:g} image", a.image_id, a.ann_id, "bbox"))


def _check_keypoints(path, anns: list[_Ann], sizes: np.ndarray, names: Sequence[str], add) -> np.ndarray:
    """Visibility values, labeled joints at (0, 0) or outside the image, ``num_keypoints``; one
    vectorised pass over the annotations of one joint count. Returns (N, J) labeled (v > 0)."""
    values = np.asarray([a.keypoints for a in anns], dtype=np.float64).reshape(len(anns), len(names), 3)
    x, y, v = values[..., 0], values[..., 1], values[..., 2]      # (N, J) each
    bad_v = ~np.isin(v, (0, 1, 2))
    labeled = v > 0
    at_origin = labeled & ~bad_v & (x == 0) & (y == 0)
    w, h = sizes[:, :1], sizes[:, 1:]                               # (N, 1): NaN when unknown
    outside = labeled & ~at_origin & ((x < 0) | (y < 0) | (x > w) | (y > h))
    counted = np.asarray([a.num_keypoints if is_number(a.num_keypoints) else -1 for a in anns])
    num_mismatch = (counted >= 0) & (counted != labeled.sum(1))
    for k in np.flatnonzero(bad_v.any(1) | at_origin.any(1) | outside.any(1) | num_mismatch):
        a = anns[k]
        if bad_v[k].any():
            add(Issue("visibility_value", path, "visibility outside {0, 1, 2} at joint "
                      + _joint_list(names, np.flatnonzero(bad_v[k]), v[k]), a.image_id, a.ann_id, "keypoints"))
        if at_origin[k].any():
            add(Issue("labeled_at_origin", path, "visibility > 0 at (0, 0) for joint "
                      + _joint_list(names, np.flatnonzero(at_origin[k])), a.image_id, a.ann_id, "keypoints"))
        if outside[k].any():
            js = np.flatnonzero(outside[k])
            add(Issue("keypoint_outside_image", path, f"labeled joint outside the {w[k, 0]:g}x{h[k, 0]:g} image: "
                      + ", ".join(f"{j} {names[j]} ({x[k, j]:g}, {y[k, j]:g})" for j in js[:4])
                      + (f" and {len(js) - 4} more" if len(js) > 4 else ""), a.image_id, a.ann_id, "keypoints"))
        if num_mismatch[k]:
            add(Issue("num_keypoints_mismatch", path, f"num_keypoints = {counted[k]} but {labeled[k].sum()} joints "
                      "have visibility > 0", a.image_id, a.ann_id, "num_keypoints"))
    return labeled


def _check_corner_boxes(path, anns: list[_Ann], sizes: np.ndarray, visible: dict, add) -> None:
    """A warning per source (the ``from`` field; the whole file without one) when its boxes look
    like [x1, y1, x2, y2]: most stick out of their image read as [x, y, w, h], and nearly every
    labeled joint lies inside them read as corners (a correct [x, y, w, h] box almost never
    contains its joints when read that way)."""
    past = np.zeros(len(anns), dtype=bool)      # box sticks out right or bottom
    boxed = np.zeros(len(anns), dtype=bool)     # box and image size known
    labeled_count = np.zeros(len(anns))         # labeled joints
    inside_count = np.zeros(len(anns))          # ... inside the box read as corners
    for index, labeled, _ in visible.values():
        sel = np.asarray([a for a, k in enumerate(index) if anns[k].box is not None], dtype=int)
        if not len(sel):
            continue
        rows = index[sel]
        box = np.asarray([anns[k].box for k in rows], dtype=np.float64)[:, None, :]       # (N, 1, 4)
        values = np.asarray([anns[k].keypoints for k in rows], dtype=np.float64).reshape(len(rows), -1, 3)
        inside = ((values[..., 0] >= box[..., 0] - 1) & (values[..., 0] <= box[..., 2] + 1)
                  & (values[..., 1] >= box[..., 1] - 1) & (values[..., 1] <= box[..., 3] + 1))  # (N, J)
        labeled_count[rows] = labeled[sel].sum(1)
        inside_count[rows] = (inside & labeled[sel]).sum(1)
    for k, a in enumerate(anns):
        if a.box is not None and np.isfinite(sizes[k, 0]):
            boxed[k] = True
            past[k] = (a.box[0] + a.box[2] > sizes[k, 0] + BOX_TOLERANCE
                       or a.box[1] + a.box[3] > sizes[k, 1] + BOX_TOLERANCE)
    source = np.asarray([a.source for a in anns], dtype=object)
    for s in sorted(set(source.tolist())):
        group = boxed & (source == s)
        total = labeled_count[group].sum()
        if not group.any() or not total:
            continue
        share_past, share_inside = past[group].mean(), inside_count[group].sum() / total
        if share_past > 0.5 and share_inside > 0.95:
            add(Issue("bbox_corner_format", path, (f"source '{s}': " if s else "")
                      + f"{int(past[group].sum())} of {int(group.sum())} boxes extend past their image read as "
                      f"[x, y, w, h], and {share_inside:.1%} of the labeled joints lie inside the boxes read as "
                      "[x1, y1, x2, y2]: the boxes may be corner boxes (training and evaluation read [x, y, w, h])",
                      field="bbox"))


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

def _statistics(images: dict, categories: dict | None, anns: list[_Ann], visible: dict, default_joints: int) -> dict:
    kept = np.asarray([a.kept for a in anns], dtype=bool)
    cat_names = {cid: str(c.get("name", cid)) for cid, c in (categories or {}).items()}
    first_category: dict = {}
    for a in anns:
        first_category.setdefault(a.image_id, a.category_id)
    per_category: dict = {}
    for a, k in zip(anns, kept):
        row = per_category.setdefault(a.category_id, {"id": a.category_id, "name": cat_names.get(a.category_id, "?"),
                                                      "images": 0, "annotations": 0, "kept": 0})
        row["annotations"] += 1
        row["kept"] += int(k)
    for cat in first_category.values():
        per_category[cat]["images"] += 1
    sources = sorted({a.source for a in anns if a.source})
    per_source = {s: {"annotations": sum(a.source == s for a in anns),
                      "kept": int(sum(k for a, k in zip(anns, kept) if a.source == s))} for s in sources}

    joints = {}
    for n, (index, labeled, names) in visible.items():
        sel = kept[index]
        lab = labeled[sel]                                                     # (K, J) over kept instances
        src = np.asarray([anns[k].source for k in index[sel]], dtype=object)
        entry = {"instances": int(sel.sum()), "names": list(names),
                 "visible": lab.sum(0).tolist(),
                 "fraction": (lab.sum(0) / max(1, len(lab))).round(4).tolist()}
        if sources:
            entry["per_source"] = {s: {"instances": int((src == s).sum()), "visible": lab[src == s].sum(0).tolist(),
                                       "fraction": lab[src == s].mean(0).round(4).tolist()}
                                   for s in sources if (src == s).any()}
        joints[n] = entry
    return {
        "images": len(images),
        "annotations": len(anns),
        "instances_kept": int(kept.sum()),
        "images_with_kept_instances": len({a.image_id for a, k in zip(anns, kept) if k}),
        "num_joints": default_joints,
        "categories": sorted(per_category.values(), key=lambda r: (not is_number(r["id"]), str(r["id"]).zfill(12))),
        "sources": per_source,
        "joints": {str(n): e for n, e in joints.items()},
    }


def format_stats(stats: dict) -> str:
    lines = ["STATISTICS",
             f"  images {stats['images']}, annotations {stats['annotations']}, kept for training "
             f"{stats['instances_kept']} (box w, h > 0 and a non-zero keypoint) on "
             f"{stats['images_with_kept_instances']} images"]
    if stats["categories"]:
        lines.append("  per category (images / annotations / kept):")
        lines += [f"    {c['id']!s:>5} {c['name']:<20s} {c['images']:6d} {c['annotations']:7d} {c['kept']:7d}"
                  for c in stats["categories"]]
    if stats["sources"]:
        lines.append("  per source (annotations / kept): " + ", ".join(
            f"{s} {v['annotations']} / {v['kept']}" for s, v in stats["sources"].items()))
    for n, e in stats["joints"].items():
        sources = list(e.get("per_source", {}))
        lines.append(f"  labeled joints (visibility > 0) of the {e['instances']} kept {n}-joint instances:"
                     + ("" if not sources else "   per source: " + " / ".join(sources)))
        for j, name in enumerate(e["names"]):
            per_source = "".join(f" {e['per_source'][s]['visible'][j]:7d}" for s in sources)
            lines.append(f"    {j:3d} {name:<24s} {e['visible'][j]:7d} {100 * e['fraction'][j]:6.1f}%{per_source}")
    return "\n".join(lines)
