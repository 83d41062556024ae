"""Joint unions built from joint names (SPEC §2.4, §2.5), and annotation files converted onto them.

FreeNet learns from datasets whose joint definitions differ. Given each source dataset's joint
names (the ``keypoints`` list of its COCO categories), :func:`build_union` resolves every name
through the joint dictionary (``resources/joints/aliases.json``, :class:`freenet.joints.AliasTable`)
and writes a union joint set:

* joint order: union joints in order of first appearance over the sources, in the order given
  (AP-10K, AnimalPose, TigDog gives exactly FreeNet's union-21 / union-24, SPEC §2.4);
* source maps: ``[source index, union index]`` per source joint;
* flip pairs: from left/right naming (``L_``/``R_``, ``left``/``right`` anywhere, ``_Left``/``_Right``,
  Horse-10's ``Near``/``Off``), see :func:`side_and_stem`;
* loss weights, OKS sigmas, upper/lower body, part groups with their minimum keep ratios and
  logging groups: from each canonical joint's dictionary entry; joints the dictionary does not know
  ("new" joints) get the dictionary's ``new_joint`` defaults (sigma 0.072, the median of AP-10K's
  sigmas; part 'exclusive'; weight 1.0; upper body; no logging group);
* a template joint set (``like``, e.g. union-24) overrides any of these for the joints it names,
  which is how union-24's own loss weights are reproduced.

:func:`convert_annotations` then writes one COCO file in union order from several source files,
so that a single image folder resolves every source's images and the training scripts can pool
the records by their ``from`` field (``DATASET.TRAIN_FILE``, see :mod:`freenet.data.settings`).
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from freenet.data.coco import load_coco_json
from freenet.errors import DataError
from freenet.fileio import write_json_atomic, write_text_atomic
from freenet.joints import (LOG_GROUPS, PART_NAMES, AliasTable, JointInfo, JointSet, load_alias_table,
                            normalize_name, parse_joint_set)


class UnionError(ValueError):
    """A union cannot be built as asked (bad source name, rename of an unknown joint...)."""


# ----------------------------------------------------------------------------------------------
# Reading a source's joints
# ----------------------------------------------------------------------------------------------

def source_joint_names(ann_file: str | os.PathLike, data: dict | None = None) -> list[str]:
    """The joint names of a COCO keypoint file: its categories' ``keypoints`` list.

    Every category that lists keypoints must list the same names in the same order (a file whose
    categories disagree cannot be mapped by one index array). Raises :class:`DataError` naming the
    file and the category.
    """
    data = load_coco_json(ann_file) if data is None else data
    categories = data.get("categories")
    if not isinstance(categories, list):
        raise DataError(ann_file, "has no 'categories' list, so its joint names are unknown")
    named = [c for c in categories if isinstance(c, dict) and c.get("keypoints")]
    if not named:
        raise DataError(ann_file, "no category lists 'keypoints' (the joint names)")
    first = named[0]
    names = first["keypoints"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(ann_file, f"category {first.get('id')} ('{first.get('name')}'): 'keypoints' must be a "
                                  "list of joint names")
    for cat in named[1:]:
        if cat["keypoints"] != names:
            raise DataError(ann_file, f"category {cat.get('id')} ('{cat.get('name')}') lists other joints than "
                                      f"category {first.get('id')} ('{first.get('name')}'): {cat['keypoints']} vs "
                                      f"{names}; split the file per joint definition")
    return list(names)


def source_skeleton(ann_file: str | os.PathLike, data: dict | None = None) -> list[tuple[int, int]]:
    """The first category's ``skeleton`` as 0-based joint pairs.

    COCO skeletons are 1-based, but some keypoint files (ATRW, Animal Kingdom) write 0-based
    ones: a 0 means 0-based, otherwise 1-based is assumed. Used only to draw new joints.
    """
    data = load_coco_json(ann_file) if data is None else data
    n = len(source_joint_names(ann_file, data))
    cat = next(c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints"))
    edges = cat.get("skeleton") or []
    if not all(isinstance(e, list) and len(e) == 2 and all(isinstance(v, int) for v in e) for e in edges):
        return []
    base = 0 if any(0 in e for e in edges) else 1
    return [(a - base, b - base) for a, b in edges if 0 <= a - base < n and 0 <= b - base < n and a != b]


# ----------------------------------------------------------------------------------------------
# Left / right from names
# ----------------------------------------------------------------------------------------------

_SIDE_WORDS = {"left": "L", "right": "R"}                          # a token anywhere
_END_WORDS = {"l": "L", "r": "R", "near": "L", "off": "R"}         # a first or last token
_GLUED = (("left", "L"), ("right", "R"), ("near", "L"), ("off", "R"))  # glued to the first token


def side_and_stem(name: str) -> tuple[str | None, str]:
    """``('L' | 'R' | None, name without the side)``, from the normalized name.

    ``L_F_hip -> ('L', 'f_hip')``, ``Eye_Left -> ('L', 'eye')``, ``left_front_paw -> ('L', 'front_paw')``,
    ``Nearknee -> ('L', 'knee')`` (Horse-10: near = the horse's left, off = its right),
    ``neck -> (None, 'neck')``. A side is only a guess until a joint with the opposite side and
    the same stem exists (:func:`flip_pairs_by_name`), so ``offset`` pairs with nothing.
    """
    tokens = normalize_name(name).split("_")
    for i, t in enumerate(tokens):
        if t in _SIDE_WORDS and len(tokens) > 1:
            return _SIDE_WORDS[t], "_".join(tokens[:i] + tokens[i + 1:])
    if len(tokens) > 1:
        if tokens[0] in _END_WORDS:
            return _END_WORDS[tokens[0]], "_".join(tokens[1:])
        if tokens[-1] in _END_WORDS:
            return _END_WORDS[tokens[-1]], "_".join(tokens[:-1])
    for prefix, side in _GLUED:
        if tokens[0].startswith(prefix) and len(tokens[0]) > len(prefix):
            return side, "_".join([tokens[0][len(prefix):], *tokens[1:]])
    return None, "_".join(tokens)


def flip_pairs_by_name(names: Sequence[str], origins: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """Left/right pairs ``(i, j)``, ``i < j``, sorted: joints with opposite sides and the same stem.

    ``origins`` (one label per joint, e.g. the source that introduced it) settles ambiguity: joints
    pair within the same origin first (Horse-10's ``Nearknee``/``Offknee`` and Animal Kingdom's
    ``Knee_Left``/``Knee_Right`` share the stem ``knee``), then leftovers pair when exactly one
    left and one right joint share a stem.
    """
    origins = list(origins) if origins is not None else [""] * len(names)
    parsed = [side_and_stem(n) for n in names]
    pairs: list[tuple[int, int]] = []
    paired: set[int] = set()

    def pair_up(groups: Mapping) -> None:
        for sides in groups.values():
            if len(sides["L"]) == 1 and len(sides["R"]) == 1:
                a, b = sides["L"][0], sides["R"][0]
                pairs.append((min(a, b), max(a, b)))
                paired.update((a, b))

    by_origin: dict = defaultdict(lambda: {"L": [], "R": []})
    for i, (side, stem) in enumerate(parsed):
        if side is not None:
            by_origin[(origins[i], stem)][side].append(i)
    pair_up(by_origin)
    leftovers: dict = defaultdict(lambda: {"L": [], "R": []})
    for i, (side, stem) in enumerate(parsed):
        if side is not None and i not in paired:
            leftovers[stem][side].append(i)
    pair_up(leftovers)
    return sorted(pairs)


# ----------------------------------------------------------------------------------------------
# Building a union
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MapRow:
    """How one source joint lands on the union (one line of the mapping report)."""

    source: str
    index: int            # joint index in the source
    name: str             # the source's spelling
    union_index: int
    union_name: str
    kind: str             # same | alias | renamed | unknown | clash
    created: bool         # this joint created its union joint
    note: str = ""        # the dictionary's note on the name, or why the joint is new


@dataclass
class _UnionJoint:
    name: str
    info: JointInfo
    origin: str           # "" for dictionary joints, else the source that introduced it


def _clean(name: str) -> str:
    """A source spelling as a union joint name: outer spaces dropped, inner whitespace '_'."""
    return "_".join(name.split())


def _template_key(name: str, table: AliasTable) -> str:
    return table.canonical_name(name) or "new:" + normalize_name(name)


def _from_template(like: JointSet, table: AliasTable) -> tuple[dict[str, JointInfo], dict[str, float]]:
    """Per joint of the template (keyed like union joints) the values it sets, and its groups' ratios."""
    upper = set(like.upper_body)
    part_of = {j: g.name for g in like.part_groups for j in g.joints}
    log_of = {j: name for name, joints in like.logging_groups.items() for j in joints}
    infos = {}
    for j, name in enumerate(like.joints):
        infos[_template_key(name, table)] = JointInfo(
            name, part_of.get(j, ""), "upper" if j in upper else "lower", log_of.get(j),
            like.sigmas[j], like.loss_weights[j])
    return infos, {g.name: g.min_ratio for g in like.part_groups}


def build_union(sources: Sequence[tuple[str, Sequence[str]]], like: JointSet | None = None,
                renames: Mapping[tuple[str, str], str] | None = None, *, name: str = "union",
                table: AliasTable | None = None, skeletons: Mapping[str, Sequence[tuple[int, int]]] | None = None,
                description: str = "") -> tuple[dict, dict[str, np.ndarray], list[MapRow]]:
    """A union joint set from the sources' joint names (SPEC §2.4, §2.5).

    Args:
        sources: ``[(source name, joint names in the source's order), ...]``; the first source's
            joints come first in the union, then each later source's joints the union lacks.
        like: a template joint set; for every union joint it names (through the dictionary) its
            loss weight, sigma, body half, part group, logging group and the groups' keep ratios
            replace the dictionary's values.
        renames: ``{(source, source joint name): union joint name}`` overriding the dictionary
            (a canonical name or alias, or any other name for a joint of its own).
        name: the union's name.
        table: the joint dictionary (default ``resources/joints/aliases.json``).
        skeletons: ``{source: [(a, b), ...]}`` 0-based source edges; those touching a new joint
            are added to the union skeleton so new joints are drawn connected.

    Returns ``(union, index, rows)``: the joint-set dictionary (the JSON layout of
    ``resources/joints/*.json``, loadable by :func:`freenet.joints.parse_joint_set`), per source
    the union index of each of its joints (an int array), and the mapping report rows.

    Two joints of one source that resolve to the same union joint are different points (a dataset
    does not annotate a point twice): the first keeps the mapping, the later one becomes a new
    joint named ``<source>_<name>`` (kind ``clash``; ``<source>_<name>_2``, ``_3``... where that name
    is taken, so every source joint keeps a slot of its own) and the report says so; ``renames``
    settles it.
    """
    table = table or load_alias_table()
    renames = {(src, normalize_name(joint)): target for (src, joint), target in (renames or {}).items()}
    seen_sources = [src for src, _ in sources]
    if len(set(seen_sources)) != len(seen_sources) or not all(seen_sources):
        raise UnionError(f"source names must be unique and non-empty, got {seen_sources}")
    for src, joint in renames:
        names = dict(sources).get(src)
        if names is None:
            raise UnionError(f"rename {src}:{joint}: no source named '{src}' (sources: {', '.join(seen_sources)})")
        if joint not in {normalize_name(n) for n in names}:
            raise UnionError(f"rename {src}:{joint}: source '{src}' has no such joint (its joints: "
                             f"{', '.join(_clean(n) for n in names)})")

    joints: list[_UnionJoint] = []
    index_of: dict[str, int] = {}          # union key -> union index
    rows: list[MapRow] = []
    index: dict[str, np.ndarray] = {}
    for src, names in sources:
        if not names:
            raise UnionError(f"source '{src}' has no joints")
        taken: dict[str, str] = {}         # union key -> the joint of this source that took it
        src_index = np.empty(len(names), dtype=np.int64)
        for s, raw in enumerate(names):
            shown = _clean(raw)
            target = renames.get((src, normalize_name(raw)))
            canonical = table.canonical_name(target if target is not None else raw)
            if canonical is not None:
                key, union_name = canonical, canonical
                kind = "renamed" if target is not None else (
                    "same" if normalize_name(raw) == normalize_name(canonical) else "alias")
                note = table.note(raw) if target is None else ""
            else:
                union_name = _clean(target) if target is not None else shown
                key, kind = "new:" + normalize_name(union_name), "renamed" if target is not None else "unknown"
                note = "" if target is not None else table.note(raw)
            if key in taken:
                note = (f"'{shown}' and '{taken[key]}' of {src} both resolve to '{joints[index_of[key]].name}'; a "
                        f"dataset does not annotate one point twice, so '{shown}' is kept apart (use --rename "
                        f"{src}:JOINT=NAME to choose)")
                union_name, kind, nth = f"{src}_{shown}", "clash", 1
                # A clash always gets a joint of its own, even when the same point clashes again.
                while (key := "new:" + normalize_name(union_name)) in taken or key in index_of:
                    nth += 1
                    union_name = f"{src}_{shown}_{nth}"
            taken[key] = shown
            created = key not in index_of
            if created:
                info = table.joints[key] if not key.startswith("new:") else table.new_joint
                index_of[key] = len(joints)
                joints.append(_UnionJoint(union_name, info, "" if not key.startswith("new:") else src))
            u = index_of[key]
            src_index[s] = u
            rows.append(MapRow(src, s, shown, u, joints[u].name, kind, created, note))
        index[src] = src_index

    # Template values replace the dictionary's for the joints the template names.
    min_ratios = dict(table.part_min_ratios)
    keys = list(index_of)                  # in union order (insertion order)
    if like is not None:
        template, template_ratios = _from_template(like, table)
        min_ratios.update(template_ratios)
        for key, joint in zip(keys, joints):
            t = template.get(key)
            if t is not None:
                joint.info = JointInfo(joint.info.name, t.part, t.half, t.log, t.sigma, t.weight,
                                       joint.info.links, joint.info.aliases, joint.info.note)

    n = len(joints)
    names_u = [j.name for j in joints]
    part_order = list(PART_NAMES) + sorted({j.info.part for j in joints} - set(PART_NAMES) - {""})
    part_groups = [{"name": part, "joints": [u for u, j in enumerate(joints) if j.info.part == part],
                    "min_ratio": min_ratios.get(part, table.part_min_ratios["exclusive"])}
                   for part in part_order]
    log_order = list(LOG_GROUPS) + sorted({j.info.log for j in joints} - set(LOG_GROUPS) - {None})
    upper = [u for u, j in enumerate(joints) if j.info.half == "upper"]
    union = {
        "name": name,
        "description": description or (f"Union of {', '.join(seen_sources)} ({n} joints), built from joint "
                                       "names by tools/build_union.py"
                                       + (f" like '{like.name}'." if like else ".")),
        "joints": names_u,
        "flip_pairs": [list(p) for p in flip_pairs_by_name(names_u, [j.origin for j in joints])],
        "loss_weights": [j.info.weight for j in joints],
        "upper_body": upper,
        "lower_body": [u for u in range(n) if u not in set(upper)],
        "sigmas": [j.info.sigma for j in joints],
        "skeleton": _skeleton(joints, index_of, index, skeletons or {}),
        # An empty group would have no joint to rank (SPEC §7.1), so it is left out.
        "part_groups": [g for g in part_groups if g["joints"]],
        "logging_groups": {g: [u for u, j in enumerate(joints) if j.info.log == g] for g in log_order},
        "sources": {src: {"joint_set": src, "map": [[s, int(u)] for s, u in enumerate(index[src])],
                          "joints": list(names)} for src, names in sources},
    }
    return union, index, rows


def _skeleton(joints: list[_UnionJoint], index_of: dict[str, int], index: dict[str, np.ndarray],
              skeletons: Mapping[str, Sequence[tuple[int, int]]]) -> list[list[int]]:
    """Dictionary links between canonical joints, plus source edges that touch a new joint;
    sorted by (later joint, earlier joint), which is the order of the FreeNet union files."""
    edges = set()
    for u, joint in enumerate(joints):
        for link in joint.info.links if not joint.origin else ():
            if link in index_of:
                edges.add((min(u, index_of[link]), max(u, index_of[link])))
    for src, pairs in skeletons.items():
        if src not in index:
            continue
        for a, b in pairs:
            ua, ub = int(index[src][a]), int(index[src][b])
            if ua != ub and (joints[ua].origin or joints[ub].origin):
                edges.add((min(ua, ub), max(ua, ub)))
    return [list(e) for e in sorted(edges, key=lambda e: (e[1], e[0]))]


def format_report(rows: Sequence[MapRow], union: Mapping | None = None) -> str:
    """The mapping report: per source, each joint -> union index and name, marked ``new`` when it
    created its union joint, ``(alias of X)`` when the dictionary renamed it, and why joints the
    dictionary does not know stay apart (notes numbered per source)."""
    lines = []
    if union is not None:
        lines.append(f"union '{union['name']}': {len(union['joints'])} joints")
    width = max((len(r.name) for r in rows), default=4)
    union_width = max((len(r.union_name) for r in rows), default=4)
    for src in dict.fromkeys(r.source for r in rows):
        mine = [r for r in rows if r.source == src]
        lines.append(f"{src}: {len(mine)} joints, {sum(r.created for r in mine)} new in the union")
        notes: list[str] = []
        for r in mine:
            marks = ["new"] if r.created else []
            marks += {"alias": [f"(alias of {r.union_name})"], "renamed": ["(renamed by --rename)"],
                      "unknown": ["(not in the joint dictionary)"], "clash": ["(CLASH)"]}.get(r.kind, [])
            if r.note and r.kind in ("unknown", "clash"):
                if r.note not in notes:
                    notes.append(r.note)
                marks.append(f"[{notes.index(r.note) + 1}]")
            lines.append(f"  {r.index:3d} {r.name:<{width}} -> {r.union_index:3d} {r.union_name:<{union_width}}  "
                         + " ".join(marks))
        lines += [f"  [{i}] {note}" for i, note in enumerate(notes, 1)]
    if union is not None:
        names = union["joints"]
        lines.append("flip pairs: " + (", ".join(f"{names[a]}/{names[b]}" for a, b in union["flip_pairs"]) or "none"))
        lines.append("part groups (min ratio, joints): " + "; ".join(
            f"{g['name']} ({g['min_ratio']:g}) {len(g['joints'])}" for g in union["part_groups"]))
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------
# Converting annotation files
# ----------------------------------------------------------------------------------------------

@dataclass
class ConvertedSource:
    """What :func:`convert_annotations` did with one source file."""

    source: str
    ann_file: str
    image_dir: str
    images: int = 0
    annotations: int = 0
    image_id_offset: int = 0
    annotation_id_offset: int = 0
    missing_images: list[str] = field(default_factory=list)
    images_without_size: int = 0
    areas_filled: int = 0
    unlisted_categories: list[int] = field(default_factory=list)


def _relative_file_name(image_dir: Path, file_name: str, root: Path) -> str:
    """``image_dir / file_name`` relative to ``root`` (absolute where no relative path exists)."""
    path = (image_dir / file_name).resolve()
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive (Windows): no relative path
        return str(path)


def convert_annotations(sources: Sequence[tuple[str, str | os.PathLike, str | os.PathLike | None]],
                        union: Mapping, out_file: str | os.PathLike, image_root: str | os.PathLike,
                        check_images: bool = True) -> list[ConvertedSource]:
    """Write one COCO keypoint file in ``union``'s joint order from several source files (SPEC §2.4).

    Args:
        sources: ``[(source name, annotation file, image folder or None), ...]``; the image folder
            defaults to the annotation file's folder. Each source must be one of the union's
            ``sources`` with the same joint names in the same order.
        union: the joint-set dictionary of :func:`build_union` (or its file, parsed).
        out_file: the COCO file to write (atomically: a reader never sees half a file).
        image_root: the folder image ``file_name`` s are written relative to, so that this one
            folder (``DATASET.TRAIN_IMAGE_DIR`` / ``VAL_IMAGE_DIR``) resolves every source's images.
        check_images: list image files that do not exist in the result (nothing is raised).

    Per annotation: keypoints remapped (joints the source lacks are 0, 0, 0; joints the source
    marks unlabeled, visibility <= 0, are written 0, 0, 0 as COCO defines them, whatever
    placeholder the source used, e.g. Animal Kingdom's -1), ``num_keypoints`` recomputed,
    ``from`` = the source name (also on each image), ``area`` = box area where the source has
    none (COCOeval needs it). Image and annotation ids are made unique across sources by adding an
    offset per source (0 for the first, then one past the largest id written so far); categories
    are merged by name and list the union's joint names and skeleton (1-based, as COCO's).
    Other fields are kept.
    """
    union_names = list(union["joints"])
    root = Path(image_root).resolve()
    out = {"info": {"description": f"annotations in the joint order of the union '{union['name']}' "
                                   "(tools/build_union.py)", "union": union["name"], "sources": []},
           "images": [], "annotations": [], "categories": []}
    skeleton_1based = [[a + 1, b + 1] for a, b in union.get("skeleton", [])]
    category_ids: dict[str, int] = {}      # category name (lower case) -> id in the output
    next_image_id, next_ann_id = 0, 0
    stats = []
    for k, (src, ann_file, image_dir) in enumerate(sources):
        ann_file = Path(ann_file)
        image_dir = Path(image_dir) if image_dir else ann_file.parent
        spec = union.get("sources", {}).get(src)
        if spec is None:
            raise UnionError(f"{ann_file}: source '{src}' is not a source of the union '{union['name']}' "
                             f"(its sources: {', '.join(union.get('sources', {}))})")
        data = load_coco_json(ann_file)
        names = source_joint_names(ann_file, data)
        if "joints" in spec and list(spec["joints"]) != names:
            raise DataError(ann_file, f"joint names {names} differ from those the union '{union['name']}' was built "
                                      f"from for '{src}' ({spec['joints']}); rebuild the union with this file")
        if max(s for s, _ in spec["map"]) + 1 != len(names):
            raise DataError(ann_file, f"has {len(names)} joints but the union's map for '{src}' has "
                                      f"{max(s for s, _ in spec['map']) + 1}")
        index = np.full(len(names), -1, dtype=np.int64)   # (Js,) union slot per source joint
        for s, u in spec["map"]:
            index[s] = u
        images, annotations = data.get("images"), data.get("annotations")
        if not isinstance(images, list) or not isinstance(annotations, list):
            raise DataError(ann_file, "'images' and 'annotations' must be lists")
        st = ConvertedSource(src, str(ann_file.resolve()), str(image_dir.resolve()), len(images), len(annotations))
        st.image_id_offset = 0 if k == 0 else next_image_id
        st.annotation_id_offset = 0 if k == 0 else next_ann_id

        # Categories: merged by name across sources; an id the file uses but does not list gets
        # a category named after the source and id (reported).
        local_cat = {}
        for cat in data.get("categories", []):
            if isinstance(cat, dict) and "id" in cat:
                local_cat[cat["id"]] = _category(out, category_ids, str(cat.get("name", f"{src}_{cat['id']}")),
                                                 cat.get("supercategory", ""), cat["id"], union_names,
                                                 skeleton_1based)
        ids = []
        known_images: set[int] = set()
        for img in images:
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise DataError(ann_file, f"an image entry lacks 'id' or 'file_name': {img!r:.100}")
            if not isinstance(img["id"], int) or img["id"] in known_images:
                raise DataError(ann_file, f"image id {img['id']!r} is not a unique integer", img["id"])
            known_images.add(img["id"])
            new = dict(img, id=img["id"] + st.image_id_offset,
                       file_name=_relative_file_name(image_dir, str(img["file_name"]), root))
            new["from"] = src
            if "width" not in img or "height" not in img:
                st.images_without_size += 1
            if check_images and not (root / new["file_name"]).is_file():
                st.missing_images.append(str(image_dir / str(img["file_name"])))
            out["images"].append(new)
            ids.append(img["id"])

        kps = np.zeros((len(annotations), len(names), 3), dtype=np.float64)  # (N, Js, 3)
        ann_ids: set[int] = set()
        for i, ann in enumerate(annotations):
            if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
                raise DataError(ann_file, f"an annotation lacks an integer 'id': {ann!r:.100}")
            if ann["id"] in ann_ids:
                raise DataError(ann_file, f"duplicate annotation id {ann['id']}", ann["id"])
            ann_ids.add(ann["id"])
            if ann.get("image_id") not in known_images:
                raise DataError(ann_file, f"annotation points at unknown image id {ann.get('image_id')}", ann["id"])
            cid = ann.get("category_id", 1)
            if cid not in local_cat:
                st.unlisted_categories.append(cid)
                local_cat[cid] = _category(out, category_ids, f"{src}_{cid}", "", cid, union_names, skeleton_1based)
            values = ann.get("keypoints") or []
            if values and len(values) != 3 * len(names):
                raise DataError(ann_file, f"'keypoints' has {len(values)} values, expected 3*{len(names)} for the "
                                          f"{len(names)} joints its categories name", ann["id"])
            if values:
                try:
                    kps[i] = np.asarray(values, dtype=np.float64).reshape(len(names), 3)
                except (TypeError, ValueError):
                    raise DataError(ann_file, "'keypoints' must contain only numbers", ann["id"]) from None
        kps[kps[..., 2] <= 0] = 0.0                                    # unlabeled: 0, 0, 0 (COCO)
        union_kps = np.zeros((len(annotations), len(union_names), 3), dtype=np.float64)  # (N, Ju, 3)
        mapped = np.flatnonzero(index >= 0)
        union_kps[:, index[mapped]] = kps[:, mapped]
        counts = (union_kps[..., 2] > 0).sum(axis=1)                   # (N,)
        for ann, values, count in zip(annotations, union_kps.reshape(len(annotations), -1).tolist(), counts.tolist()):
            new = dict(ann, id=ann["id"] + st.annotation_id_offset, image_id=ann["image_id"] + st.image_id_offset,
                       category_id=local_cat[ann.get("category_id", 1)], keypoints=values, num_keypoints=count)
            new["from"] = src
            box = ann.get("bbox")
            if "area" not in ann and isinstance(box, list) and len(box) == 4:
                new["area"] = float(box[2]) * float(box[3])
                st.areas_filled += 1
            out["annotations"].append(new)

        largest = max([i + st.image_id_offset for i in ids], default=next_image_id - 1)
        next_image_id = max(next_image_id, largest + 1)
        largest = max([a["id"] + st.annotation_id_offset for a in annotations], default=next_ann_id - 1)
        next_ann_id = max(next_ann_id, largest + 1)
        out["info"]["sources"].append({"name": src, "file": st.ann_file, "image_dir": st.image_dir,
                                       "image_id_offset": st.image_id_offset,
                                       "annotation_id_offset": st.annotation_id_offset,
                                       "images": st.images, "annotations": st.annotations})
        stats.append(st)
    write_json_atomic(out_file, out)
    return stats


def _category(out: dict, category_ids: dict[str, int], name: str, supercategory, wanted_id, union_names,
              skeleton) -> int:
    """The output id of a category name: the first source's id where free, else the next one."""
    key = name.strip().lower()
    if key not in category_ids:
        used = set(category_ids.values())
        new_id = wanted_id if isinstance(wanted_id, int) and wanted_id not in used else max(used, default=0) + 1
        category_ids[key] = new_id
        out["categories"].append({"id": new_id, "name": name, "supercategory": supercategory,
                                  "keypoints": list(union_names), "skeleton": skeleton})
    return category_ids[key]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def format_joint_set(union: Mapping) -> str:
    """The joint-set dictionary as JSON laid out like ``resources/joints/*.json``: one line per
    field, per part group, per logging group and per source."""
    lines = []
    for key, value in union.items():
        if isinstance(value, dict) and value:
            inner = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines.append(f"  {json.dumps(key)}: {{\n" + ",\n".join(inner) + "\n  }")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            inner = [f"    {json.dumps(v)}" for v in value]
            lines.append(f"  {json.dumps(key)}: [\n" + ",\n".join(inner) + "\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


# ----------------------------------------------------------------------------------------------
# A union folder: joint set + converted annotations + config (tools/build_union.py)
# ----------------------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class SourceFile:
    """One ``--source`` / ``--val`` argument: ``NAME=ANNOTATION_JSON[:IMAGE_DIR]``."""

    name: str
    ann_file: Path
    image_dir: Path | None = None

    @classmethod
    def parse(cls, text: str) -> SourceFile:
        """``ap10k=data/ap_10k/annotations/ap10k-train-split1.json:data/ap_10k/data``; the image
        folder defaults to the annotation file's folder."""
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise UnionError(f"expected NAME=ANNOTATION_JSON[:IMAGE_DIR], got {text!r}")
        if not _SAFE_NAME.match(name):
            raise UnionError(f"source name {name!r}: use letters, digits, '_', '-' and '.'")
        # The annotation file ends in .json; a ':' after it starts the image folder.
        cut = rest.lower().find(".json:")
        if cut >= 0:
            return cls(name, Path(rest[:cut + 5]), Path(rest[cut + 6:]))
        return cls(name, Path(rest))


def parse_rename(text: str) -> tuple[tuple[str, str], str]:
    """``SRC:JOINT=UNION_JOINT`` -> ``((SRC, JOINT), UNION_JOINT)``."""
    left, sep, target = text.partition("=")
    src, sep2, joint = left.partition(":")
    if not (sep and sep2 and src and joint.strip() and target.strip()):
        raise UnionError(f"expected SOURCE:JOINT=UNION_JOINT, got {text!r}")
    return (src, joint), target.strip()


@dataclass
class UnionFolder:
    """What :func:`make_union_folder` wrote."""

    union: dict
    rows: list[MapRow]
    joint_set_file: Path
    train_file: Path
    val_file: Path | None
    config_file: Path
    report_file: Path
    train_stats: list[ConvertedSource]
    val_stats: list[ConvertedSource]


def make_union_folder(out_dir: str | os.PathLike, name: str, train: Sequence[SourceFile],
                      val: Sequence[SourceFile] = (), like: JointSet | None = None,
                      renames: Mapping[tuple[str, str], str] | None = None, *, labeled: str = "ratio",
                      sample_ratio: float = 0.1, check_images: bool = True,
                      table: AliasTable | None = None) -> UnionFolder:
    """Build a union from the train files' joint names and write, under ``out_dir``:

    * ``NAME.json``: the union joint set (``load_joint_set(path)`` loads it);
    * ``annotations/train.json`` (+ ``annotations/val.json``): the files in union order, image
      names relative to ``out_dir``;
    * ``config.yaml``: a yacs config for every training script and ``eval_ap10k.py``
      (DATASET.JOINTS, MODEL.NUM_JOINTS, DATASET.TRAIN_FILE / TRAIN_IMAGE_DIR, DATASET.VAL_ANN_FILE /
      VAL_IMAGE_DIR; without val files the train file is also the validation set);
    * ``report.txt``: the mapping report.
    """
    if not _SAFE_NAME.match(name):
        raise UnionError(f"union name {name!r}: use letters, digits, '_', '-' and '.'")
    if not train:
        raise UnionError("no --source given")
    train_names = [s.name for s in train]
    unknown = [s.name for s in val if s.name not in train_names]
    if unknown:
        raise UnionError(f"--val sources {unknown} have no --source (train) file; sources: {train_names}")
    out_dir = Path(out_dir).resolve()
    data = {s.name: load_coco_json(s.ann_file) for s in train}
    sources = [(s.name, source_joint_names(s.ann_file, data[s.name])) for s in train]
    skeletons = {s.name: source_skeleton(s.ann_file, data[s.name]) for s in train}
    union, _, rows = build_union(sources, like, renames, name=name, table=table, skeletons=skeletons)
    parse_joint_set(union, f"<union {name}>")  # the file we write must load

    joint_set_file = out_dir / f"{name}.json"
    write_text_atomic(joint_set_file, format_joint_set(union))
    train_file = out_dir / "annotations" / "train.json"
    train_stats = convert_annotations([(s.name, s.ann_file, s.image_dir) for s in train], union, train_file,
                                      out_dir, check_images)
    val_file, val_stats = None, []
    if val:
        val_file = out_dir / "annotations" / "val.json"
        val_stats = convert_annotations([(s.name, s.ann_file, s.image_dir) for s in val], union, val_file,
                                        out_dir, check_images)
    report = format_report(rows, union)
    report_file = out_dir / "report.txt"
    write_text_atomic(report_file, report + "\n")
    config_file = out_dir / "config.yaml"
    write_text_atomic(config_file, union_config(union, joint_set_file, train_file, out_dir, val_file, labeled,
                                                sample_ratio, train))
    return UnionFolder(union, rows, joint_set_file, train_file, val_file, config_file, report_file,
                       train_stats, val_stats)


def union_config(union: Mapping, joint_set_file: Path, train_file: Path, image_dir: Path, val_file: Path | None,
                 labeled: str, sample_ratio: float, train: Sequence[SourceFile] = ()) -> str:
    """The yacs yaml of a union folder (paths absolute: scripts may run from anywhere)."""
    if labeled not in ("ratio", "all"):
        raise UnionError(f"labeled must be 'ratio' or 'all', got {labeled!r}")
    q = json.dumps  # a JSON string is a valid YAML scalar, whatever the path contains
    cfg = q(str(joint_set_file.parent / "config.yaml"))
    lines = [f"# FreeNet on the joint union '{union['name']}' ({len(union['joints'])} joints), written by "
             "tools/build_union.py from:"]
    lines += [f"#   {s.name}: {s.ann_file}" + (f" (images {s.image_dir})" if s.image_dir else "") for s in train]
    lines += [
        "# FreeNet:      python train_ap10k_animalpose_tigdog.py --cfg " + cfg
        + " --pretrained-weights-name BASE.pth  (or '' for a random teacher)",
        "# base network: python train_supervised.py --cfg " + cfg + " --save-as pretrained_weights/BASE.pth",
        "# evaluation:   python eval_ap10k.py --cfg " + cfg + " TEST.MODEL_FILE RUN/best-oks.pth",
        "DATASET:",
        f"  JOINTS: {q(str(joint_set_file))}   # joint set: flip pairs, loss weights, sigmas, part groups",
        f"  TRAIN_FILE: {q(str(train_file))}",
        f"  TRAIN_IMAGE_DIR: {q(str(image_dir))}   # image file names are relative to this folder",
    ]
    if val_file is not None:
        lines += [f"  VAL_ANN_FILE: {q(str(val_file))}", f"  VAL_IMAGE_DIR: {q(str(image_dir))}"]
    else:
        lines += [f"  VAL_ANN_FILE: {q(str(train_file))}   # no --val files: the train file is evaluated",
                  f"  VAL_IMAGE_DIR: {q(str(image_dir))}"]
    lines += [
        f"  LABELED: {labeled}   # ratio: a seeded SAMPLE_RATIO of the pooled records labeled, the rest unlabeled"
        "; all: every record both",
        f"  SAMPLE_RATIO: {sample_ratio:g}   # the FreeNet scripts' --sample-ratio flag (default 0.1) overrides it",
        "MODEL:",
        f"  NUM_JOINTS: {len(union['joints'])}",
    ]
    return "\n".join(lines) + "\n"
