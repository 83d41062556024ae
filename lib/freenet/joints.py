"""Joint sets as data (SPEC §2).

A joint set is a JSON file under ``resources/joints/``: joint names in model order, flip pairs,
loss weights, upper/lower body ids, OKS sigmas, a drawing skeleton, the pseudo-label part
groups with their minimum keep ratios (§2.5), logging groups and, for a union, the map from
each source set. Nothing in the code hard-codes a joint index.

Source -> union maps can also be rebuilt from joint *names* through the joint dictionary
``resources/joints/aliases.json`` (:func:`map_by_name`), which is how datasets with other
spellings or orders (MMPose's AnimalPose, ATRW, ...) are brought onto a union. The dictionary
also carries each canonical joint's part, body half, logging group, sigma, loss weight and
skeleton links, so :mod:`freenet.unions` can build a whole union joint-set file from names.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from freenet.errors import is_number

RESOURCES = Path(os.environ.get("FREENET_RESOURCES", Path(__file__).resolve().parents[2] / "resources"))
JOINTS_DIR = RESOURCES / "joints"
ALIASES_FILE = JOINTS_DIR / "aliases.json"

PART_NAMES = ("face", "front", "back", "exclusive")


class JointSetError(ValueError):
    """A joint-set file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class PartGroup:
    """One pseudo-label group (§2.5): joints whose keep threshold is shared."""

    name: str
    joints: tuple[int, ...]
    min_ratio: float


@dataclass(frozen=True)
class SourceMap:
    """How one source dataset's joints land on this (union) joint set (§2.4)."""

    joint_set: str
    pairs: tuple[tuple[int, int], ...]  # (source index, union index)


@dataclass(frozen=True)
class JointSet:
    name: str
    joints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    loss_weights: tuple[float, ...]
    upper_body: tuple[int, ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...]
    part_groups: tuple[PartGroup, ...]
    logging_groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    sources: Mapping[str, SourceMap] = field(default_factory=dict)
    sigmas_freenet: tuple[float, ...] | None = None
    description: str = ""
    path: str = ""

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def lower_body(self) -> tuple[int, ...]:
        """Every joint not in the upper body (the half-body rule of §4 uses exactly this)."""
        upper = set(self.upper_body)
        return tuple(j for j in range(self.num_joints) if j not in upper)

    @property
    def shared_joints(self) -> tuple[int, ...]:
        """The joints every source dataset of a union annotates, all joints of a single dataset's
        set: the paper's "shared" joints; the others are its "exclusive" ones (§11.8)."""
        shared = set(range(self.num_joints))
        for smap in self.sources.values():
            shared &= {u for _, u in smap.pairs}
        return tuple(sorted(shared))

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation ``p`` with ``flipped[j] = original[p[j]]`` (left/right swap)."""
        perm = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def sigmas_for(self, protocol: str = "standard") -> np.ndarray:
        """OKS sigmas: aligned ones, or the FreeNet paper's AP-10K list (§11.6)."""
        if protocol == "standard":
            return np.asarray(self.sigmas, dtype=np.float64)
        if protocol == "freenet":
            if self.sigmas_freenet is None:
                raise JointSetError(
                    f"{self.path}: joint set '{self.name}' has no 'sigmas_freenet' for --protocol freenet")
            return np.asarray(self.sigmas_freenet, dtype=np.float64)
        raise ValueError(f"unknown evaluation protocol {protocol!r} (expected 'standard' or 'freenet')")

    def source_index(self, source: str) -> np.ndarray:
        """``idx[s]`` = union index of source joint ``s`` (from the file's map)."""
        if source not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none"
            raise JointSetError(f"{self.path}: joint set '{self.name}' has no source '{source}' (known: {known})")
        smap = self.sources[source]
        n_src = max(s for s, _ in smap.pairs) + 1
        idx = np.full(n_src, -1, dtype=np.int64)
        for s, u in smap.pairs:
            idx[s] = u
        return idx


def _err(path, key, msg):
    return JointSetError(f"{path}: field '{key}': {msg}")


def _index_list(path, key, values, n):
    if not isinstance(values, list) or not all(isinstance(v, int) and 0 <= v < n for v in values):
        raise _err(path, key, f"expected a list of joint indices in [0, {n})")
    return tuple(values)


def _pairs(path, key, values, n_left, n_right=None):
    n_right = n_left if n_right is None else n_right
    ok = isinstance(values, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and isinstance(p[1], int)
        and 0 <= p[0] < n_left and 0 <= p[1] < n_right for p in values)
    if not ok:
        raise _err(path, key, "expected a list of [i, j] index pairs within the joint range")
    return tuple((p[0], p[1]) for p in values)


# The fields of a joint-set file; any other is refused (a misspelt optional field would otherwise
# be silently ignored).
REQUIRED_FIELDS = ("name", "joints", "flip_pairs", "loss_weights", "upper_body", "sigmas", "part_groups")
OPTIONAL_FIELDS = ("lower_body", "sigmas_freenet", "skeleton", "logging_groups", "sources", "description")


def _no_unknown(path, prefix, data, known):
    unknown = [k for k in data if k not in known]
    if unknown:
        raise _err(path, prefix + str(unknown[0]), f"unknown field (the fields here: {', '.join(known)})")


def _float_list(path, key, values, n, positive=False):
    """``n`` finite numbers (``positive``: each > 0, else each >= 0)."""
    if not isinstance(values, list) or len(values) != n or not all(is_number(v) for v in values):
        raise _err(path, key, f"expected {n} numbers (one per joint)")
    bad = [v for v in values if (v <= 0 if positive else v < 0)]
    if bad:
        raise _err(path, key, f"expected numbers {'> 0' if positive else '>= 0'}, got {bad[0]}")
    return tuple(float(v) for v in values)


def _flip_pairs(path, values, n):
    """Left/right pairs: two different joints each, every joint in at most one pair (a permutation)."""
    pairs = _pairs(path, "flip_pairs", values, n)
    pair_of = {}
    for pair in pairs:
        if pair[0] == pair[1]:
            raise _err(path, "flip_pairs", f"{list(pair)} pairs a joint with itself")
        for j in pair:
            if j in pair_of:
                raise _err(path, "flip_pairs", f"joint {j} is in {list(pair_of[j])} and in {list(pair)} (each joint "
                                               f"swaps with one other joint at most)")
            pair_of[j] = pair
    return pairs


def parse_joint_set(data: dict, path: str = "<dict>") -> JointSet:
    """Validate a joint-set dictionary (the JSON layout of ``resources/joints/*.json``)."""
    if not isinstance(data, dict):
        raise JointSetError(f"{path}: expected a JSON object (a joint set), got {type(data).__name__}")
    if "keypoints" in data and "joints" not in data:
        raise JointSetError(f"{path}: an original FreeNet keypoints-format file (field 'keypoints'), not a joint set: "
                            f"name a bundled set ({', '.join(available_joint_sets())}) or a file in the layout of "
                            f"resources/joints/*.json")
    for key in REQUIRED_FIELDS:
        if key not in data:
            raise _err(path, key, "missing")
    _no_unknown(path, "", data, REQUIRED_FIELDS + OPTIONAL_FIELDS)
    names = data["joints"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _err(path, "joints", "expected a non-empty list of joint names")
    if len(set(names)) != len(names):
        raise _err(path, "joints", "joint names must be unique")
    n = len(names)
    groups, group_of = [], {}
    for g in data["part_groups"]:
        if not isinstance(g, dict) or not {"name", "joints", "min_ratio"} <= set(g):
            raise _err(path, "part_groups", "each group needs 'name', 'joints' and 'min_ratio'")
        _no_unknown(path, f"part_groups.{g['name']}.", g, ("name", "joints", "min_ratio"))
        joints = _index_list(path, f"part_groups.{g['name']}.joints", g["joints"], n)
        for j in joints:
            if j in group_of:
                raise _err(path, f"part_groups.{g['name']}.joints",
                           f"joint {j} is also in group '{group_of[j]}' (each joint in one group)")
            group_of[j] = g["name"]
        if not (is_number(g["min_ratio"]) and 0 <= g["min_ratio"] <= 1):
            raise _err(path, f"part_groups.{g['name']}.min_ratio",
                       f"expected a ratio in [0, 1], got {g['min_ratio']!r}")
        groups.append(PartGroup(str(g["name"]), joints, float(g["min_ratio"])))
    sources = {}
    for src, spec in data.get("sources", {}).items():
        if not isinstance(spec, dict) or "map" not in spec:
            raise _err(path, f"sources.{src}", "expected {'joint_set': ..., 'map': [[source, union], ...]}")
        _no_unknown(path, f"sources.{src}.", spec, ("joint_set", "map", "joints"))   # joints: the source's names
        pairs = _pairs(path, f"sources.{src}.map", spec["map"], 10 ** 6, n)
        sources[src] = SourceMap(str(spec.get("joint_set", src)), pairs)
    upper = _index_list(path, "upper_body", data["upper_body"], n)
    js = JointSet(
        name=str(data["name"]),
        joints=tuple(names),
        flip_pairs=_flip_pairs(path, data["flip_pairs"], n),
        loss_weights=_float_list(path, "loss_weights", data["loss_weights"], n),
        upper_body=upper,
        sigmas=_float_list(path, "sigmas", data["sigmas"], n, positive=True),
        skeleton=_pairs(path, "skeleton", data.get("skeleton", []), n),
        part_groups=tuple(groups),
        logging_groups={k: _index_list(path, f"logging_groups.{k}", v, n)
                        for k, v in data.get("logging_groups", {}).items()},
        sources=sources,
        sigmas_freenet=(_float_list(path, "sigmas_freenet", data["sigmas_freenet"], n, positive=True)
                        if "sigmas_freenet" in data else None),
        description=str(data.get("description", "")),
        path=str(path),
    )
    if "lower_body" in data and tuple(sorted(data["lower_body"])) != js.lower_body:
        raise _err(path, "lower_body", "must be exactly the joints not listed in 'upper_body'")
    return js


def joint_set_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled name (``ap10k``, ``union24``...) or a path to a joint-set JSON file."""
    p = Path(name_or_path)
    if p.exists():
        return p
    if p.suffix == ".json":
        raise FileNotFoundError(f"{p}: joint-set file not found (or give a bundled name: "
                                f"{', '.join(available_joint_sets())})")
    bundled = JOINTS_DIR / f"{name_or_path}.json"
    if not bundled.exists():
        known = ", ".join(available_joint_sets())
        raise FileNotFoundError(f"no joint set '{name_or_path}': not a file and not one of {known}")
    return bundled


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise JointSetError(f"{path}: malformed JSON: {e}") from e


@lru_cache(maxsize=None)
def _load_cached(path: str) -> JointSet:
    return parse_joint_set(_read_json(path), path)


def load_joint_set(name_or_path: str | os.PathLike) -> JointSet:
    """Load (and cache) a joint set by bundled name or file path."""
    return _load_cached(str(joint_set_path(name_or_path).resolve()))


def available_joint_sets() -> list[str]:
    return sorted(p.stem for p in JOINTS_DIR.glob("*.json") if p.name != ALIASES_FILE.name)


# ----------------------------------------------------------------------------------------------
# Names and aliases
# ----------------------------------------------------------------------------------------------

def normalize_name(name: str) -> str:
    """Case-folded name with spaces, '-' and '.' treated as '_' (``"L_F_Knee" == "l-f-knee"``)."""
    return re.sub(r"[\s\-.]+", "_", name.strip()).strip("_").lower()


HALVES = ("upper", "lower")
LOG_GROUPS = ("head", "front", "back")


@dataclass(frozen=True)
class JointInfo:
    """One entry of the joint dictionary (``resources/joints/aliases.json``): what a union built
    from names gives this joint (SPEC §2.4, §2.5)."""

    name: str
    part: str                  # pseudo-label group: face / front / back / exclusive (§2.5)
    half: str = "upper"        # upper / lower body (half-body crops, §4)
    log: str | None = None     # pseudo-label logging group: head / front / back, or none
    sigma: float = 0.072       # OKS sigma (§11.6)
    weight: float = 1.0        # default loss weight
    links: tuple[str, ...] = ()    # canonical joints it is drawn connected to
    aliases: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class AliasTable:
    """The joint dictionary: canonical joint names, every known spelling, and per joint its part,
    body half, logging group, OKS sigma, loss weight and skeleton links (:class:`JointInfo`)."""

    canonical: Mapping[str, str]  # normalized spelling -> canonical name
    parts: Mapping[str, str]      # canonical name -> part tag
    joints: Mapping[str, JointInfo] = field(default_factory=dict)   # canonical name -> info, dictionary order
    part_min_ratios: Mapping[str, float] = field(default_factory=dict)  # part -> minimum keep ratio (§2.5)
    new_joint: JointInfo = JointInfo("", "exclusive")  # defaults for joints the dictionary does not know
    distinct: Mapping[str, str] = field(default_factory=dict)  # normalized name -> why it is not an alias
    path: str = ""

    def canonical_name(self, name: str) -> str | None:
        return self.canonical.get(normalize_name(name))

    def info(self, name: str) -> JointInfo | None:
        """The dictionary entry of any spelling of a canonical joint, else None."""
        canonical = self.canonical_name(name)
        return None if canonical is None else self.joints.get(canonical)

    def note(self, name: str) -> str:
        """Why a name maps where it does (alias notes) or stays its own joint ('distinct' notes)."""
        info = self.info(name)
        return info.note if info is not None else self.distinct.get(normalize_name(name), "")


def _joint_info(path, key, name, spec, defaults: JointInfo) -> JointInfo:
    if not isinstance(spec, dict):
        raise _err(path, key, "expected an object {part, half, log, sigma, weight, links, aliases, note}")
    part = spec.get("part", defaults.part)
    if part not in PART_NAMES:
        raise _err(path, f"{key}.part", f"expected one of {PART_NAMES}")
    half = spec.get("half", defaults.half)
    if half not in HALVES:
        raise _err(path, f"{key}.half", f"expected one of {HALVES}")
    log = spec.get("log", defaults.log)
    if log is not None and log not in LOG_GROUPS:
        raise _err(path, f"{key}.log", f"expected one of {LOG_GROUPS} or null")
    numbers = {}
    for field_name, positive in (("sigma", True), ("weight", False)):
        value = spec.get(field_name, getattr(defaults, field_name))
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (positive and value == 0):
            raise _err(path, f"{key}.{field_name}", "expected a " + ("positive" if positive else "non-negative")
                       + " number")
        numbers[field_name] = float(value)
    lists = {}
    for field_name in ("links", "aliases"):
        value = spec.get(field_name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _err(path, f"{key}.{field_name}", "expected a list of names")
        lists[field_name] = tuple(value)
    return JointInfo(name, part, half, log, numbers["sigma"], numbers["weight"], lists["links"], lists["aliases"],
                     str(spec.get("note", "")))


def parse_alias_table(data: dict, path: str = "<dict>") -> AliasTable:
    """Validate the joint dictionary (layout of ``resources/joints/aliases.json``).

    Only ``part`` is required per joint; other fields default to the ``new_joint`` entry.
    Every spelling must name one canonical joint, ``links`` must name canonical joints, and no
    name may be both an alias and listed under ``distinct``.
    """
    entries = data.get("joints")
    if not isinstance(entries, dict):
        raise _err(path, "joints", "expected an object {canonical name: {part, aliases, ...}}")
    ratios = data.get("part_min_ratios", {"face": 0.5, "front": 0.6, "back": 0.65, "exclusive": 0.65})
    if not (isinstance(ratios, dict) and set(ratios) == set(PART_NAMES)
            and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in ratios.values())):
        raise _err(path, "part_min_ratios", f"expected a ratio in [0, 1] for each of {PART_NAMES}")
    new_joint = _joint_info(path, "new_joint", "", data.get("new_joint", {}), JointInfo("", "exclusive"))
    canonical: dict[str, str] = {}
    joints: dict[str, JointInfo] = {}
    for name, spec in entries.items():
        info = _joint_info(path, f"joints.{name}", name, spec, new_joint)
        joints[name] = info
        for spelling in [name, *info.aliases]:
            key = normalize_name(spelling)
            if canonical.get(key, name) != name:
                raise _err(path, f"joints.{name}.aliases", f"'{spelling}' is already an alias of '{canonical[key]}'")
            canonical[key] = name
    for name, info in joints.items():
        unknown = [link for link in info.links if link not in joints]
        if unknown:
            raise _err(path, f"joints.{name}.links", f"not canonical joints: {unknown}")
    distinct: dict[str, str] = {}
    for i, group in enumerate(data.get("distinct", [])):
        if not isinstance(group, dict) or not isinstance(group.get("names"), list):
            raise _err(path, f"distinct[{i}]", "expected {'names': [...], 'note': ...}")
        for spelling in group["names"]:
            key = normalize_name(spelling)
            if key in canonical:
                raise _err(path, f"distinct[{i}]", f"'{spelling}' is also an alias of '{canonical[key]}'")
            distinct[key] = str(group.get("note", ""))
    return AliasTable(canonical, {n: j.part for n, j in joints.items()}, joints,
                      {k: float(v) for k, v in ratios.items()}, new_joint, distinct, str(path))


@lru_cache(maxsize=None)
def _alias_cached(path: str) -> AliasTable:
    return parse_alias_table(_read_json(path), path)


def load_alias_table(path: str | os.PathLike = ALIASES_FILE) -> AliasTable:
    return _alias_cached(str(Path(path).resolve()))


def map_by_name(source_names: Sequence[str], target_names: Sequence[str],
                aliases: AliasTable | None = None) -> np.ndarray:
    """``idx[s]`` = index in ``target_names`` of the joint that ``source_names[s]`` names, or -1.

    Both sides are resolved through the alias table, so ``left_front_elbow`` (AnimalPose),
    ``L_F_Elbow`` (MMPose) and ``left_shoulder`` (AP-10K) all land on ``L_F_hip``. A name the
    table does not know can still match a target with the same normalized spelling.
    """
    aliases = aliases or load_alias_table()

    def key(name):
        return aliases.canonical_name(name) or normalize_name(name)

    target = {}
    for t, name in enumerate(target_names):
        k = key(name)
        if k in target:
            raise ValueError(f"target joints '{target_names[target[k]]}' and '{name}' are the same joint '{k}'")
        target[k] = t
    return np.array([target.get(key(name), -1) for name in source_names], dtype=np.int64)


def remap_keypoints(keypoints: np.ndarray, visibility: np.ndarray, index: np.ndarray,
                    num_target: int) -> tuple[np.ndarray, np.ndarray]:
    """Move source joints onto target slots (§2.4); unmapped target joints get (0, 0), vis 0.

    keypoints (..., Js, 2), visibility (..., Js), index (Js,) with -1 for dropped joints.
    """
    lead = keypoints.shape[:-2]
    out_k = np.zeros((*lead, num_target, 2), dtype=np.float32)
    out_v = np.zeros((*lead, num_target), dtype=np.float32)
    src = np.flatnonzero(index >= 0)
    out_k[..., index[src], :] = keypoints[..., src, :]
    out_v[..., index[src]] = visibility[..., src]
    return out_k, out_v
