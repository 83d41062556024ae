"""Synthetic quadrupeds with known joints, written as a complete FreeNet data root (SPEC §2, §3).

A new user has no AP-10K, AnimalPose or TigDog. This module draws cartoon quadrupeds whose 24
union joints (SPEC §2.4) are known exactly, and writes them in the data-root layout of SPEC §3.1
as three "datasets" with *different joint definitions and orders* -- AP-10K's 17, AnimalPose's 20
(FreeNet order), TigDog's 19 -- plus the union files, a fully annotated union-24 val set, the
AP-10K missing-joint split files and per-species label lists (§3.3). Everything is seeded: the
same seed gives byte-identical annotation files and identical images.

How an animal is built (:func:`sample_animal`): a side-view skeleton in a canonical frame (body
length 1, facing +x, y down) -- body ellipse, neck band, head ellipse with snout, ears, four
three-segment legs, a 2-3 segment tail -- with a little depth: the legs, ears and eyes of the far
side are shifted up/sideways and drawn darker and behind the body. That depth cue, together with
the facing direction, is what makes left and right learnable. (Tinting the left legs differently
would not be: horizontal-flip augmentation swaps the labels but not the tint.) An animal facing
right shows the viewer its right side, so its near legs are the R_* joints; a mirrored one shows
its left side. The canonical frame is mirrored, scaled, rotated and placed in the image; every
shape and joint goes through the same affine map, so joints sit exactly where they are drawn.

Joint conventions (union-24 names, ``resources/joints/union24.json``): ``*_F_hip`` top of the
front leg (AP-10K "shoulder"), ``*_F_knee`` end of its first segment (AP-10K "elbow"),
``*_F_paw`` end of the third segment; likewise ``*_B_*`` for the back legs; ``neck`` on the neck
axis near the body, ``throat`` on the front (lower) edge of the neck under the jaw, ``wither`` the
top of the back above the front legs, ``tail`` the root of the tail, ``chin`` the bottom of the
mouth, ``*_shoulder`` (TigDog) on the body side between the wither and the front-leg top, ears at
the ear base. Paws, nose, eyes and chin are drawn as untextured discs of known colours; hips and
knees as slightly darker discs on the legs.

Visibility: a joint outside the image, under an occluder, or under another animal drawn later
is unannotated (v = 0, coordinates 0, 0 as in the AP-10K files); joints hidden by the animal's
own body (far legs, far shoulder) stay annotated, as annotators of real data do for obvious ones.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from freenet.data.coco import DATASETS, DataLayout, load_coco_records, to_union
from freenet.data.records import Record
from freenet.data.splits import (SPLIT_PRESETS, filter_by_image_ids, generate_missing_joint_split,
                                 write_split_file)
from freenet.fileio import write_json_atomic
from freenet.joints import JointSet, load_joint_set

logger = logging.getLogger(__name__)

UNION = "union24"
RGB = tuple  # (r, g, b), 0..255


# ----------------------------------------------------------------------------------------------
# Species
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Species:
    """Proportions (in body lengths; ranges are sampled uniformly) and palette of one species."""

    id: int
    name: str
    supercategory: str
    body_h: tuple[float, float]        # body height
    leg_len: tuple[float, float]       # hip-to-paw length of a straight leg
    leg_width: float                   # leg thickness factor
    neck_len: tuple[float, float]
    neck_angle: tuple[float, float]    # degrees above horizontal
    neck_width: tuple[float, float]
    head_len: tuple[float, float]
    head_aspect: tuple[float, float]   # head height / head length
    snout_len: tuple[float, float]
    ear: str                           # pointed | floppy | round | side
    ear_size: float                    # in head lengths
    tail_len: tuple[float, float]
    tail_angle: tuple[float, float]    # first segment, degrees above "straight back"
    tail_curl: tuple[float, float]     # change per further segment, degrees
    tail_width: float
    coats: tuple[RGB, ...]
    pattern: str                       # tabby | spots | plain | wool | stripes
    nose: RGB
    paw: RGB
    eye: RGB
    limb: RGB | None = None            # face and legs colour when unlike the coat (sheep)
    tail_colour: RGB | None = None     # horse tails are darker than the coat


SPECIES: tuple[Species, ...] = (
    Species(1, "cat", "Felidae", body_h=(0.34, 0.42), leg_len=(0.44, 0.54), leg_width=0.85,
            neck_len=(0.14, 0.2), neck_angle=(30, 50), neck_width=(0.16, 0.2), head_len=(0.24, 0.28),
            head_aspect=(0.8, 0.9), snout_len=(0.03, 0.05), ear="pointed", ear_size=0.45,
            tail_len=(0.6, 0.8), tail_angle=(20, 70), tail_curl=(-10, 35), tail_width=0.05,
            coats=((130, 130, 135), (215, 140, 60), (55, 52, 50), (205, 195, 175)), pattern="tabby",
            nose=(235, 125, 150), paw=(95, 70, 70), eye=(120, 175, 60)),
    Species(2, "dog", "Canidae", body_h=(0.38, 0.46), leg_len=(0.52, 0.64), leg_width=1.0,
            neck_len=(0.18, 0.26), neck_angle=(35, 55), neck_width=(0.18, 0.22), head_len=(0.24, 0.28),
            head_aspect=(0.7, 0.8), snout_len=(0.1, 0.15), ear="floppy", ear_size=0.5,
            tail_len=(0.35, 0.5), tail_angle=(15, 60), tail_curl=(-20, 20), tail_width=0.05,
            coats=((150, 100, 55), (210, 180, 130), (70, 55, 45), (225, 220, 205)), pattern="spots",
            nose=(25, 20, 25), paw=(60, 45, 35), eye=(95, 60, 30)),
    Species(3, "horse", "Equidae", body_h=(0.42, 0.5), leg_len=(0.8, 0.95), leg_width=0.75,
            neck_len=(0.38, 0.48), neck_angle=(45, 65), neck_width=(0.2, 0.24), head_len=(0.3, 0.36),
            head_aspect=(0.45, 0.55), snout_len=(0.1, 0.14), ear="pointed", ear_size=0.3,
            tail_len=(0.45, 0.6), tail_angle=(-80, -50), tail_curl=(-15, 10), tail_width=0.08,
            coats=((125, 75, 40), (95, 60, 35), (45, 38, 35), (195, 188, 180)), pattern="plain",
            nose=(80, 60, 65), paw=(40, 35, 32), eye=(60, 40, 30), tail_colour=(35, 28, 25)),
    Species(4, "sheep", "Bovidae", body_h=(0.5, 0.6), leg_len=(0.38, 0.48), leg_width=0.75,
            neck_len=(0.14, 0.2), neck_angle=(20, 40), neck_width=(0.2, 0.24), head_len=(0.24, 0.28),
            head_aspect=(0.65, 0.75), snout_len=(0.08, 0.1), ear="side", ear_size=0.4,
            tail_len=(0.12, 0.18), tail_angle=(-70, -30), tail_curl=(-10, 10), tail_width=0.07,
            coats=((235, 230, 215), (220, 212, 195), (200, 195, 185)), pattern="wool",
            nose=(150, 95, 100), paw=(30, 28, 28), eye=(175, 140, 60), limb=(60, 55, 52)),
    Species(5, "tiger", "Felidae", body_h=(0.34, 0.4), leg_len=(0.42, 0.5), leg_width=1.1,
            neck_len=(0.16, 0.22), neck_angle=(20, 40), neck_width=(0.2, 0.24), head_len=(0.26, 0.3),
            head_aspect=(0.8, 0.9), snout_len=(0.06, 0.09), ear="round", ear_size=0.3,
            tail_len=(0.6, 0.8), tail_angle=(-45, 0), tail_curl=(10, 40), tail_width=0.055,
            coats=((225, 130, 40), (235, 150, 60), (215, 120, 45)), pattern="stripes",
            nose=(205, 110, 115), paw=(90, 60, 45), eye=(210, 165, 45)),
)
SPECIES_BY_NAME = {s.name: s for s in SPECIES}
TIGDOG_SPECIES = ("horse", "tiger")  # TigDog has horses and tigers only (file names horse/..., tiger/...)


def get_species(species: str | Species) -> Species:
    if isinstance(species, Species):
        return species
    if species not in SPECIES_BY_NAME:
        raise ValueError(f"unknown synthetic species {species!r} (expected one of {', '.join(SPECIES_BY_NAME)})")
    return SPECIES_BY_NAME[species]


# ----------------------------------------------------------------------------------------------
# Geometry helpers (canonical frame: body length 1, facing +x, y down)
# ----------------------------------------------------------------------------------------------

def _ellipse(center, ax: float, ay: float, angle: float = 0.0, n: int = 28) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(angle), math.sin(angle)
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([center[0] + c * x - s * y, center[1] + s * x + c * y], axis=1)  # (n, 2)


def _segment(p, q, w1: float, w2: float) -> np.ndarray:
    """Tapered quad from p (width w1) to q (width w2)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9)
    return np.stack([p + n * w1 / 2, q + n * w2 / 2, q - n * w2 / 2, p - n * w1 / 2])  # (4, 2)


def _down(angle_deg: float) -> np.ndarray:
    """Unit vector ``angle`` degrees from straight down, positive = forward (+x)."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), math.cos(a)])


@dataclass
class Part:
    """One filled shape, painted in list order (back to front).

    ``source`` picks the colour: a per-pixel map (``coat``, ``limb``, ``tail``; textured and
    shaded) times ``k``, or the flat ``rgb`` (markers: nose, paws, eyes...).
    """

    polygon: np.ndarray | None = None   # (N, 2)
    center: np.ndarray | None = None    # (2,) for a disc
    radius: float = 0.0
    source: str = "coat"
    k: float = 1.0
    rgb: RGB = (0, 0, 0)
    min_radius_px: float = 0.0          # discs stay at least this big after scaling


@dataclass
class Animal:
    """A sampled animal in image coordinates, ready to render (see :func:`render_animal`)."""

    species: Species
    keypoints: np.ndarray     # (24, 2) union-24 order, image pixels (x, y)
    parts: list[Part]         # image-space shapes, back to front
    colours: dict             # named flat colours, e.g. "nose", "paw_near", "paw_far", "eye"
    near_side: str            # "R" when facing right (image +x), "L" when mirrored
    to_canonical: np.ndarray  # (2, 3) affine map image pixel -> canonical (unmirrored) frame
    coat: np.ndarray          # (3,)
    second: np.ndarray        # (3,) pattern colour
    limb: np.ndarray          # (3,)
    tail: np.ndarray          # (3,)
    noise: np.ndarray         # (n, n) texture noise grid over the canonical box [-1, 1]^2
    stripe_freq: float
    stripe_phase: float


# ----------------------------------------------------------------------------------------------
# Sampling one animal
# ----------------------------------------------------------------------------------------------

def _u(rng: np.random.Generator, lo_hi) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _jitter_colour(rng, rgb, amount=0.12) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float64) * rng.uniform(1 - amount, 1 + amount, 3), 0, 255)


def sample_animal(rng: np.random.Generator, species: str | Species = "cat", image_size: int = 128, *,
                  mirror: bool | None = None, rotation: float | None = None, extent: float | None = None,
                  center: Sequence[float] | None = None, truncation: bool | None = None) -> Animal:
    """Draw the parameters of one animal and lay it out in an ``image_size`` square image.

    Every random number is drawn in a fixed order whatever the overrides, so two calls with
    generators in the same state differ only in what was overridden (the mirror test uses this):
    ``mirror`` (face left), ``rotation`` (degrees, counter-clockwise on screen), ``extent``
    (largest side of the animal's box as a fraction of the image), ``center`` (image position of
    the body centre; then no truncation adjustment), ``truncation`` (allow the animal to stick out
    of the image).
    """
    sp = get_species(species)
    S = float(image_size)

    # -- proportions and pose (canonical frame) --
    b = _u(rng, sp.body_h) / 2                       # body half height; half length is 0.5
    leg = _u(rng, sp.leg_len)
    nl, phi, nw = _u(rng, sp.neck_len), math.radians(_u(rng, sp.neck_angle)), _u(rng, sp.neck_width)
    hl = _u(rng, sp.head_len)
    hh = hl * _u(rng, sp.head_aspect)
    psi = math.radians(rng.uniform(-10, 35))         # head pitch, nose down
    sl = _u(rng, sp.snout_len)
    half_w = rng.uniform(0.11, 0.15)                 # body half width (depth)
    kx, ky = rng.uniform(-0.25, 0.25), rng.uniform(0.15, 0.4)  # oblique projection of depth
    xf, yf = rng.uniform(0.22, 0.3), rng.uniform(0.1, 0.35) * b     # front leg top
    xb, yb = -rng.uniform(0.22, 0.3), rng.uniform(0.0, 0.3) * b     # back leg top
    ang_neck = math.radians(rng.uniform(35, 55))
    ang_tail = math.radians(rng.uniform(145, 165))
    amp, phase = rng.uniform(0, 22), rng.uniform(0, 2 * np.pi)
    front_a = [(rng.uniform(-8, 8), rng.uniform(-25, 5), rng.uniform(5, 40)) for _ in range(2)]
    back_a = [(rng.uniform(10, 35), rng.uniform(40, 70), rng.uniform(25, 55)) for _ in range(2)]
    n_tail = int(rng.integers(2, 4))
    tail_len = _u(rng, sp.tail_len)
    tail_angles = [_u(rng, sp.tail_angle)] + [_u(rng, sp.tail_curl) for _ in range(2)]

    # -- colours and texture --
    coat = _jitter_colour(rng, sp.coats[int(rng.integers(len(sp.coats)))])
    if sp.pattern == "spots":
        second = np.array([(240, 238, 230), (45, 35, 30), (190, 150, 100)][int(rng.integers(3))], np.float64)
    elif sp.pattern == "stripes":
        second = np.array([30.0, 25.0, 25.0])
    elif sp.pattern == "wool":
        second = coat * 0.8
    else:
        second = coat * 0.62
    limb = _jitter_colour(rng, sp.limb) if sp.limb is not None else coat
    tail_rgb = _jitter_colour(rng, sp.tail_colour) if sp.tail_colour is not None else limb
    noise_n = 24 if sp.pattern == "wool" else 7
    noise = rng.random((noise_n, noise_n)).astype(np.float32)
    stripe_freq, stripe_phase = rng.uniform(7, 10), rng.uniform(0, 2 * np.pi)

    # -- placement --
    mirror_draw = bool(rng.random() < 0.5)
    rot_draw = rng.uniform(-30, 30)
    extent_draw = rng.uniform(0.55, 0.9)
    trunc_draw = bool(rng.random() < 0.15)
    trunc_amount = rng.uniform(0.05, 0.3)
    place = rng.random(2)
    mirror = mirror_draw if mirror is None else bool(mirror)
    rotation = rot_draw if rotation is None else float(rotation)
    extent = extent_draw if extent is None else float(extent)
    truncation = trunc_draw if truncation is None else bool(truncation)

    near, far = ("L", "R") if mirror else ("R", "L")
    depth = np.array([kx, ky]) * half_w             # screen offset of the near side (far: minus)
    side_offset = {near: depth, far: -depth}

    # -- canonical joints --
    def top(x):
        return -b * math.sqrt(max(0.0, 1 - (x / 0.5) ** 2))

    kp: dict[str, np.ndarray] = {}
    wither = np.array([xf - 0.02, top(xf - 0.02) + 0.01])
    kp["wither"] = wither
    p0 = np.array([0.5 * math.cos(ang_neck), -b * math.sin(ang_neck)]) * 0.8   # neck base (inside body)
    d_neck = np.array([math.cos(phi), -math.sin(phi)])
    p1 = p0 + nl * d_neck
    perp = np.array([math.sin(phi), math.cos(phi)])                              # neck's lower side
    kp["neck"] = p0 + 0.3 * (p1 - p0)
    kp["throat"] = p0 + 0.85 * (p1 - p0) + perp * nw * 0.42
    u = np.array([math.cos(psi), math.sin(psi)])    # head forward
    v = np.array([-math.sin(psi), math.cos(psi)])   # head down
    hc = p1 + u * 0.3 * hl - v * 0.1 * hh
    sc = hc + u * (0.38 * hl + 0.5 * sl) + v * 0.15 * hh
    snout_a, snout_b = 0.5 * sl + 0.12 * hl, 0.3 * hh
    kp["nose"] = sc + u * snout_a * 0.85 - v * 0.1 * hh
    kp["chin"] = sc + v * snout_b * 0.8 - u * 0.1 * sl
    eye_near = hc + u * 0.12 * hl - v * 0.12 * hh
    eye_far = eye_near + u * 0.16 * hl - v * 0.1 * hh
    kp[f"{near}_eye"], kp[f"{far}_eye"] = eye_near, eye_far
    ear_near = hc - u * 0.15 * hl - v * 0.36 * hh
    ear_far = ear_near + u * 0.16 * hl - v * 0.06 * hh
    kp[f"{near}_ear"], kp[f"{far}_ear"] = ear_near, ear_far
    tail_root = np.array([0.5 * math.cos(ang_tail), -b * math.sin(ang_tail)]) * 0.97
    kp["tail"] = tail_root

    # Legs: three segments from the leg top; the walking phase is diagonal (near front with far back).
    legs = {}
    swings = {("F", near): math.sin(phase), ("F", far): math.sin(phase + np.pi),
              ("B", near): math.sin(phase + np.pi), ("B", far): math.sin(phase)}
    lw = sp.leg_width
    for end, (x0, y0), fracs, widths in (
            ("F", (xf, yf), (0.42, 0.42, 0.16), (0.11, 0.065, 0.05, 0.045)),
            ("B", (xb, yb), (0.36, 0.38, 0.26), (0.14, 0.075, 0.05, 0.045))):
        for i, side in enumerate((near, far)):
            sw = amp * swings[(end, side)]
            if end == "F":
                a1, bend, fwd = front_a[i]
                angles = (sw + a1, sw + a1 + bend, sw + a1 + bend + fwd)
            else:
                a1, back, fwd = back_a[i]
                angles = (sw + a1, sw + a1 - back, sw + a1 - back + fwd)
            pts = [np.array([x0, y0]) + side_offset[side]]
            for frac, ang in zip(fracs, angles):
                pts.append(pts[-1] + leg * frac * _down(ang))
            legs[(end, side)] = (np.stack(pts), np.asarray(widths) * lw)
            kp[f"{side}_{end}_hip"], kp[f"{side}_{end}_knee"], kp[f"{side}_{end}_paw"] = pts[0], pts[1], pts[3]
    for side in (near, far):
        kp[f"{side}_shoulder"] = np.array([xf + 0.02, wither[1] + 0.45 * (yf - wither[1])]) + side_offset[side]

    # -- canonical shapes, back to front --
    parts: list[Part] = []
    paw_rgb = np.asarray(sp.paw, np.float64)
    colours = {"nose": tuple(sp.nose), "paw_near": tuple(sp.paw), "paw_far": tuple(np.round(paw_rgb * 0.75)),
               "eye": (20, 18, 18), "iris": tuple(sp.eye)}

    def add_leg(end, side, k):
        pts, w = legs[(end, side)]
        for j in range(3):
            parts.append(Part(polygon=_segment(pts[j], pts[j + 1], w[j], w[j + 1]), source="limb", k=k))
        parts.append(Part(center=pts[2], radius=w[2] / 2, source="limb", k=k))          # wrist / hock
        parts.append(Part(center=pts[0], radius=w[0] / 2, source="limb", k=k * 0.92))   # leg top
        parts.append(Part(center=pts[1], radius=w[1] * 0.62, source="limb", k=k * 0.8, min_radius_px=1.2))
        paw = colours["paw_near"] if side == near else colours["paw_far"]
        parts.append(Part(center=pts[3], radius=w[3] * 0.75, source="flat", rgb=paw, min_radius_px=1.6))

    def add_ear(base, k):
        e = sp.ear_size * hl
        if sp.ear == "pointed":
            apex = base - v * e - u * 0.15 * e
            tri = np.stack([base - u * 0.32 * e, apex, base + u * 0.32 * e + v * 0.05 * e])
            parts.append(Part(polygon=tri, source="limb", k=k))
            inner = base + (tri - base) * 0.55 - v * 0.05 * e
            parts.append(Part(polygon=inner, source="flat", rgb=tuple(np.round(np.array([230, 160, 165]) * k))))
        elif sp.ear == "floppy":
            parts.append(Part(polygon=_ellipse(base - u * 0.15 * e + v * 0.45 * e, 0.22 * e, 0.55 * e, psi + 0.35),
                              source="limb", k=k * 0.7))
        elif sp.ear == "round":
            parts.append(Part(polygon=_ellipse(base - v * 0.3 * e, 0.45 * e, 0.45 * e), source="flat",
                              rgb=tuple(np.round(np.array([40, 30, 28]) * k))))
            parts.append(Part(polygon=_ellipse(base - v * 0.3 * e, 0.28 * e, 0.28 * e), source="limb", k=k))
        else:  # side: sheep ears stick out backwards
            parts.append(Part(polygon=_ellipse(base - u * 0.5 * e, 0.55 * e, 0.18 * e, psi - 0.3), source="limb", k=k))

    add_leg("F", far, 0.62)
    add_leg("B", far, 0.62)
    # Tail: tapered segments with round joints, behind the body.
    t_pts = [tail_root]
    t_ang = 0.0
    for i in range(n_tail):
        t_ang += tail_angles[min(i, 2)]
        a = math.radians(t_ang)
        t_pts.append(t_pts[-1] + tail_len / n_tail * np.array([-math.cos(a), -math.sin(a)]))
    tw = np.linspace(sp.tail_width, sp.tail_width * 0.45, n_tail + 1)
    for i in range(n_tail):
        parts.append(Part(polygon=_segment(t_pts[i], t_pts[i + 1], tw[i], tw[i + 1]), source="tail"))
        parts.append(Part(center=t_pts[i + 1], radius=tw[i + 1] / 2, source="tail"))
    add_ear(ear_far, 0.7)
    parts.append(Part(polygon=_ellipse((0.0, 0.0), 0.5, b, 0.0, 40)))                  # body
    parts.append(Part(polygon=_segment(p0, p1, nw, nw * 0.8)))                           # neck
    parts.append(Part(center=p1, radius=nw * 0.4))
    parts.append(Part(polygon=_ellipse(kp[f"{near}_shoulder"] + np.array([0.0, 0.02]), 0.05, 0.075, 0.3), k=0.88))
    add_leg("B", near, 1.0)
    add_leg("F", near, 1.0)
    parts.append(Part(polygon=_ellipse(hc, hl / 2, hh / 2, psi), source="limb"))          # head
    parts.append(Part(polygon=_ellipse(sc, snout_a, snout_b, psi), source="limb", k=0.95))  # snout
    add_ear(ear_near, 1.0)
    for eye, scale in ((eye_far, 0.8), (eye_near, 1.0)):
        parts.append(Part(center=eye, radius=0.085 * hl * scale, source="flat", rgb=colours["iris"],
                          min_radius_px=1.8 * scale))
        parts.append(Part(center=eye, radius=0.05 * hl * scale, source="flat", rgb=colours["eye"],
                          min_radius_px=1.1 * scale))
    mouth = _segment(kp["nose"] + v * 0.12 * hh, kp["chin"], 0.02 * hl, 0.02 * hl)
    colours["chin"] = tuple(np.round(limb * 0.45))
    parts.append(Part(polygon=mouth, source="flat", rgb=colours["chin"]))
    parts.append(Part(center=kp["chin"], radius=0.04 * hl, source="flat", rgb=colours["chin"], min_radius_px=1.2))
    parts.append(Part(center=kp["nose"], radius=0.07 * hl, source="flat", rgb=colours["nose"], min_radius_px=1.6))

    # -- canonical -> image: mirror, scale to the sampled extent, rotate, place --
    union = load_joint_set(UNION)
    missing = [n for n in union.joints if n not in kp]
    if missing:
        raise RuntimeError(f"synthetic animal lacks union joints {missing} ({union.path})")
    canon_kp = np.stack([kp[n] for n in union.joints])                          # (24, 2)
    all_pts = np.concatenate([canon_kp] + [p.polygon for p in parts if p.polygon is not None])
    flip = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
    th = math.radians(rotation)
    rot = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])  # counter-clockwise on screen
    lin = rot @ flip                                                              # canonical -> screen, unscaled
    pts = all_pts @ lin.T
    size = max(float(np.ptp(pts[:, 0])), float(np.ptp(pts[:, 1])))
    scale = extent * S / size
    lo, hi = pts.min(0) * scale, pts.max(0) * scale                              # box around the origin
    if center is None:
        slack = trunc_amount * (hi - lo) if truncation else np.zeros(2)
        lo_c, hi_c = -lo - slack, (S - 1) - hi + slack
        t = np.where(hi_c >= lo_c, lo_c + place * (hi_c - lo_c), (lo_c + hi_c) / 2)
    else:
        t = np.asarray(center, np.float64)
    A = np.concatenate([lin * scale, t[:, None]], axis=1)                         # (2, 3)

    def warp(p):
        return p @ A[:, :2].T + A[:, 2]

    img_parts = []
    for p in parts:
        q = Part(source=p.source, k=p.k, rgb=p.rgb, min_radius_px=p.min_radius_px)
        if p.polygon is not None:
            q.polygon = warp(p.polygon)
        else:
            q.center, q.radius = warp(p.center[None])[0], max(p.radius * scale, p.min_radius_px)
        img_parts.append(q)
    # Texture coordinates live in the canonical frame, so a mirrored animal carries the mirrored texture.
    inv = np.linalg.inv(A[:, :2])
    to_canonical = np.concatenate([inv, (-inv @ t)[:, None]], axis=1)
    return Animal(sp, warp(canon_kp).astype(np.float32), img_parts, colours, near, to_canonical,
                  coat, second, limb, tail_rgb, noise, stripe_freq, stripe_phase)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

_SHIFT = 4           # cv2 sub-pixel bits: coordinates in 1/16 px
_ONE = 1 << _SHIFT


def _paint(canvas: np.ndarray, colour, *, polygon=None, center=None, radius=0.0, k=1.0,
           coverage: np.ndarray | None = None) -> None:
    """Alpha-composite one anti-aliased shape onto ``canvas`` (H, W, 3) float32, in place.

    ``colour`` is an RGB triple or a per-pixel map (H, W, 3) (scaled by ``k``). Only the shape's
    bounding box is touched. ``coverage`` (H, W) accumulates the shape's alpha (max).
    """
    h, w = canvas.shape[:2]
    if polygon is not None:
        lo, hi = polygon.min(0), polygon.max(0)
    else:
        lo, hi = center - radius, center + radius
    x0, y0 = max(int(math.floor(lo[0])) - 1, 0), max(int(math.floor(lo[1])) - 1, 0)
    x1, y1 = min(int(math.ceil(hi[0])) + 2, w), min(int(math.ceil(hi[1])) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    off = np.array([x0, y0], np.float64)
    if polygon is not None:
        cv2.fillPoly(mask, [np.round((polygon - off) * _ONE).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
    else:
        c = np.round((center - off) * _ONE).astype(np.int64)
        cv2.circle(mask, (int(c[0]), int(c[1])), int(round(radius * _ONE)), 255, -1, cv2.LINE_AA, _SHIFT)
    alpha = mask.astype(np.float32) * (1.0 / 255.0)                           # (h, w)
    roi = canvas[y0:y1, x0:x1]
    col = np.asarray(colour, np.float32)
    col = col[y0:y1, x0:x1] * k if col.ndim == 3 else col * k
    roi += (col - roi) * alpha[..., None]
    if coverage is not None:
        np.maximum(coverage[y0:y1, x0:x1], alpha, out=coverage[y0:y1, x0:x1])


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _colour_maps(animal: Animal, size: int, texture: bool) -> dict[str, np.ndarray]:
    """Per-pixel colours of the coat, limbs and tail: pattern mix and top-to-bottom shading."""
    if not texture:
        return {"coat": animal.coat.astype(np.float32), "limb": animal.limb.astype(np.float32),
                "tail": animal.tail.astype(np.float32)}
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    A = animal.to_canonical.astype(np.float32)
    cx = A[0, 0] * xs + A[0, 1] * ys + A[0, 2]                                  # (S, S) canonical x
    cy = A[1, 0] * xs + A[1, 1] * ys + A[1, 2]                                  # (S, S) canonical y
    n = animal.noise.shape[0]
    # The noise grid spans the canonical box [-1, 1]^2; sample it (cubic) at every pixel.
    noise = cv2.remap(animal.noise, (cx + 1) * 0.5 * (n - 1), (cy + 1) * 0.5 * (n - 1),
                      cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    pattern = animal.species.pattern
    if pattern == "stripes":
        wave = np.sin(2 * np.pi * (cx * animal.stripe_freq + 0.6 * noise) + animal.stripe_phase)
        mix = _smoothstep(0.45, 0.8, wave)
    elif pattern == "spots":
        mix = _smoothstep(0.62, 0.7, noise)
    elif pattern == "tabby":
        mix = 0.8 * _smoothstep(0.3, 0.8, np.sin(2 * np.pi * cx * 6 + 4 * noise) * 0.5 + 0.5)
    elif pattern == "wool":
        mix = noise
    else:
        mix = 0.15 * noise
    shade = (1.12 - 0.3 * np.clip((cy + 0.3) / 0.9, 0.0, 1.0))[..., None]      # lit from above
    mix = mix[..., None]
    coat = (animal.coat * (1 - mix) + animal.second * mix) * shade
    limb = coat if animal.species.limb is None else animal.limb * shade * (1 - 0.15 * mix)
    tail = limb if animal.species.tail_colour is None else animal.tail * shade
    return {"coat": coat.astype(np.float32), "limb": limb.astype(np.float32), "tail": tail.astype(np.float32)}


def render_animal(canvas: np.ndarray, animal: Animal, texture: bool = True) -> np.ndarray:
    """Paint ``animal`` onto ``canvas`` (S, S, 3) float32 RGB in place; returns its silhouette (S, S)."""
    size = canvas.shape[0]
    maps = _colour_maps(animal, size, texture)
    silhouette = np.zeros(canvas.shape[:2], np.float32)
    for p in animal.parts:
        colour = p.rgb if p.source == "flat" else maps[p.source]
        k = 1.0 if p.source == "flat" else p.k
        _paint(canvas, colour, polygon=p.polygon, center=p.center, radius=p.radius, k=k, coverage=silhouette)
    return silhouette


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random textured background (S, S, 3) float32: smooth noise, stripes, blobs or ground/sky."""
    kind = int(rng.integers(4))
    c1, c2 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:    # smooth colour noise
        n = int(rng.integers(3, 9))
        grid = rng.uniform(20, 235, (n, n, 3)).astype(np.float32)
        bg = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # stripes
        t, f, ph = rng.uniform(0, np.pi), rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
        m = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xs * math.cos(t) + ys * math.sin(t)) + ph)
        bg = c1 * (1 - m[..., None]) + c2 * m[..., None]
    elif kind == 2:  # blurred blobs
        bg = np.empty((size, size, 3), np.float32)
        bg[:] = c1
        for _ in range(int(rng.integers(8, 25))):
            c = rng.uniform(0, size, 2)
            cv2.circle(bg, (int(c[0]), int(c[1])), int(rng.uniform(0.03, 0.2) * size),
                       rng.uniform(20, 235, 3).tolist(), -1, cv2.LINE_AA)
        bg = cv2.GaussianBlur(bg, (0, 0), size * 0.01 + 0.5)
    else:            # ground and sky
        horizon = rng.uniform(0.3, 0.7)
        m = _smoothstep(horizon - 0.03, horizon + 0.03, ys)
        bg = c1 * (1 - m[..., None]) + c2 * m[..., None] * (0.8 + 0.4 * ys[..., None])
    bg = bg + rng.normal(0, rng.uniform(2, 8), (size, size, 3))
    return np.clip(bg, 0, 255).astype(np.float32)


@dataclass
class Instance:
    """One drawn animal: union-24 joints, visibility (2 visible, 0 not annotatable) and box."""

    species: Species
    keypoints: np.ndarray   # (24, 2) float32, image pixels
    visibility: np.ndarray  # (24,) uint8 in {0, 2}
    box: np.ndarray         # (4,) float32 [x, y, w, h] of the silhouette inside the image


def _visible_at(mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """mask value at the pixel of each point (0 for points outside the image)."""
    h, w = mask.shape
    ix, iy = np.round(pts[:, 0]).astype(np.int64), np.round(pts[:, 1]).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.zeros(len(pts), np.float32)
    out[inside] = mask[iy[inside], ix[inside]]
    return out


def _in_image(pts: np.ndarray, size: int) -> np.ndarray:
    return (pts[:, 0] >= 0) & (pts[:, 0] <= size - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= size - 1)


def _occluder(rng: np.random.Generator, box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A rotated rectangle over part of ``box``, and its colour (flat grey or a texture map)."""
    x, y, w, h = box
    rw, rh = rng.uniform(0.25, 0.55) * w, rng.uniform(0.3, 0.7) * h
    c = np.array([x + rng.uniform(0.1, 0.9) * w, y + rng.uniform(0.1, 0.9) * h])
    a = rng.uniform(-0.4, 0.4)
    rect = np.stack([c + np.array([math.cos(a), math.sin(a)]) * dx * rw / 2
                     + np.array([-math.sin(a), math.cos(a)]) * dy * rh / 2
                     for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    if rng.random() < 0.5:
        colour = np.full(3, rng.uniform(60, 200), np.float32)
    else:
        colour = draw_background(rng, size)
    return rect, colour


def draw_scene(rng: np.random.Generator, image_size: int = 128, species: Sequence[str | Species] = ("cat",), *,
               texture: bool = True, background: bool = True, occlusion: bool | float = 0.2,
               min_visible: int = 10, **placement) -> tuple[np.ndarray, list[Instance]]:
    """An image (S, S, 3) uint8 RGB with one animal per entry of ``species`` (drawn in order).

    ``occlusion``: probability of an occluding rectangle (or True/False). Joints outside the
    image, under the occluder or under a later animal get visibility 0. An animal is resampled
    (a few times) until at least ``min_visible`` of its 24 joints are visible. ``placement``
    (mirror, rotation, extent, center, truncation) is passed to :func:`sample_animal`.
    """
    S = int(image_size)
    canvas = draw_background(rng, S) if background else np.full((S, S, 3), 128.0, np.float32)
    if len(species) > 1:
        placement.setdefault("extent", float(rng.uniform(0.4, 0.6)))
    animals, silhouettes = [], []
    for sp in species:
        for attempt in range(8):
            animal = sample_animal(rng, sp, S, **placement)
            trial = canvas.copy()
            sil = render_animal(trial, animal, texture)
            shown = int(_in_image(animal.keypoints, S).sum())
            # An earlier animal must keep enough joints not covered by this one.
            earlier_ok = all(int((_in_image(a.keypoints, S) & (_visible_at(sil, a.keypoints) <= 0.5)).sum())
                             >= min_visible for a in animals)
            if (sil > 0.5).any() and shown >= min_visible and earlier_ok:
                break
        canvas = trial
        animals.append(animal)
        silhouettes.append(sil)

    # Which joints of each animal are hidden by later animals.
    hidden = [np.zeros(len(a.keypoints), bool) for a in animals]
    for i, a in enumerate(animals):
        for later in silhouettes[i + 1:]:
            hidden[i] |= _visible_at(later, a.keypoints) > 0.5
    boxes = []
    for sil in silhouettes:
        ys, xs = np.nonzero(sil > 0.5)
        boxes.append(np.array([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], np.float32)
                     if len(xs) else np.zeros(4, np.float32))

    occlude = bool(rng.random() < occlusion) if not isinstance(occlusion, bool) else occlusion
    if occlude:
        target = int(rng.integers(len(animals)))
        rect, colour = _occluder(rng, boxes[target], S)
        cover = np.zeros((S, S), np.float32)
        _paint(canvas, colour, polygon=rect, coverage=cover)
        for i, a in enumerate(animals):
            hidden[i] |= _visible_at(cover, a.keypoints) > 0.5

    instances = []
    for a, hid, box in zip(animals, hidden, boxes):
        vis = (_in_image(a.keypoints, S) & ~hid).astype(np.uint8) * 2
        instances.append(Instance(a.species, a.keypoints, vis, box))
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return image, instances


def draw_animal(rng: np.random.Generator, image_size: int = 128, species: str | Species = "cat",
                **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One animal on a background: ``(image (S, S, 3) uint8 RGB, keypoints (24, 2) float32 in
    union-24 order, visibility (24,) uint8 in {0, 2}, box (4,) float32 [x, y, w, h])``.

    Keyword arguments are those of :func:`draw_scene` (texture, background, occlusion, and the
    placement overrides of :func:`sample_animal`).
    """
    image, (inst,) = draw_scene(rng, image_size, (species,), **kwargs)
    return image, inst.keypoints, inst.visibility, inst.box


# ----------------------------------------------------------------------------------------------
# COCO files
# ----------------------------------------------------------------------------------------------

# Joint names as each dataset's files spell them in their categories (the joint *order* is the
# joint-set file's; tests check that the alias table maps these names onto it one to one).
CATEGORY_KEYPOINT_NAMES: dict[str, tuple[str, ...]] = {
    "ap10k": ("left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
              "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
              "left_back_paw", "right_hip", "right_knee", "right_back_paw"),
    "animalpose": ("left_eye", "right_eye", "nose", "left_ear", "right_ear", "left_front_elbow",
                   "right_front_elbow", "left_back_elbow", "right_back_elbow", "left_front_knee",
                   "right_front_knee", "left_back_knee", "right_back_knee", "left_front_paw", "right_front_paw",
                   "left_back_paw", "right_back_paw", "throat", "withers", "tailbase"),
}

# How each dataset writes a visible joint (AP-10K files use 2, the AnimalPose and TigDog files 1).
VISIBLE_CODE = {"ap10k": 2, "animalpose": 1, "tigdog": 1, "union21": 2, "union24": 2}
# Per-image / per-annotation "from" of the union files, spelled as the authors' files spell it.
FROM_NAME = {"ap10k": "ap_10k", "animalpose": "animal_pose", "tigdog": "tigdog"}
# Union files need ids unique across their sources.
ID_OFFSET = {"ap10k": 0, "animalpose": 100_000, "tigdog": 200_000, "union24_val": 300_000}
# Written in every synthetic data root: tools/make_synthetic_data.py writes again only over such a
# folder (or a new or empty one), never over a user's real annotations.
MARKER = ".freenet-synthetic"

SIZE_PRESETS: dict[str, dict[str, int]] = {
    "default": {"ap10k_train": 240, "ap10k_val": 60, "ap10k_test": 60, "animalpose_train": 240,
                "animalpose_val": 60, "tigdog_train": 240, "tigdog_val": 60, "union24_val": 120},
    "tiny": {"ap10k_train": 16, "ap10k_val": 8, "ap10k_test": 8, "animalpose_train": 16,
             "animalpose_val": 8, "tigdog_train": 16, "tigdog_val": 8, "union24_val": 8},
}
LABEL_LIST_SIZES = (5, 10, 25)
TWO_ANIMAL_PROB = 0.06
OCCLUSION_PROB = 0.2

_STREAMS = {"ap10k_train": 1, "ap10k_val": 2, "ap10k_test": 3, "animalpose_train": 4, "animalpose_val": 5,
            "tigdog_train": 6, "tigdog_val": 7, "union24_val": 8, "label_lists": 9}


def source_to_union_index(joint_set: str) -> np.ndarray:
    """``idx[s]`` = union-24 index of joint ``s`` of ``joint_set`` (a source or union21), by name."""
    union = load_joint_set(UNION)
    names = load_joint_set(joint_set).joints
    return np.array([union.joints.index(n) for n in names], np.int64)


def coco_keypoints(keypoints24: np.ndarray, visibility24: np.ndarray, joint_set: str,
                   visible_code: int | None = None) -> list:
    """Union-24 joints -> a COCO ``keypoints`` list in ``joint_set``'s order.

    Unannotated joints are ``0, 0, 0``; annotated ones ``x, y, code`` with coordinates rounded
    to 0.01 px and ``code`` the dataset's visible code (:data:`VISIBLE_CODE`).
    """
    code = VISIBLE_CODE.get(joint_set, 2) if visible_code is None else visible_code
    idx = source_to_union_index(joint_set)
    kps, vis = np.asarray(keypoints24, np.float64)[idx], np.asarray(visibility24)[idx]
    out = []
    for (x, y), v in zip(kps.tolist(), vis.tolist()):
        out += [round(x, 2), round(y, 2), code] if v > 0 else [0, 0, 0]
    return out


def _category(sp: Species, joint_set: str) -> dict:
    js = load_joint_set(joint_set)
    names = CATEGORY_KEYPOINT_NAMES.get(joint_set, js.joints)
    one_based = joint_set == "ap10k"  # the official AP-10K skeleton is 1-based
    return {"id": sp.id, "name": sp.name, "supercategory": sp.supercategory, "keypoints": list(names),
            "skeleton": [[a + one_based, b + one_based] for a, b in js.skeleton]}


def _annotation(ann_id: int, image_id: int, inst: Instance, joint_set: str, source: str | None = None) -> dict:
    kps = coco_keypoints(inst.keypoints, inst.visibility, joint_set)
    x, y, w, h = (int(v) for v in inst.box)
    ann = {"id": ann_id, "image_id": image_id, "category_id": inst.species.id, "bbox": [x, y, w, h],
           "area": w * h, "iscrowd": 0, "num_keypoints": sum(1 for v in kps[2::3] if v > 0), "keypoints": kps}
    if source is not None:
        ann["from"] = FROM_NAME.get(source, source)
    return ann


def _coco(description: str, seed: int, images: list, annotations: list, categories: list) -> dict:
    return {"info": {"description": description, "version": "1.0", "contributor": "freenet.data.synthetic",
                     "seed": seed},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def resolve_sizes(sizes: str | Mapping[str, int] | None) -> dict[str, int]:
    """A preset name (``default``, ``tiny``) or a mapping of counts merged over ``default``."""
    if sizes is None:
        return dict(SIZE_PRESETS["default"])
    if isinstance(sizes, str):
        if sizes not in SIZE_PRESETS:
            raise ValueError(f"unknown size preset {sizes!r} (expected one of {', '.join(SIZE_PRESETS)})")
        return dict(SIZE_PRESETS[sizes])
    unknown = set(sizes) - set(SIZE_PRESETS["default"])
    if unknown:
        raise ValueError(f"unknown size keys {sorted(unknown)} (expected {', '.join(SIZE_PRESETS['default'])})")
    out = {**SIZE_PRESETS["default"], **{k: int(v) for k, v in sizes.items()}}
    if any(v < 1 for v in out.values()):
        raise ValueError(f"every image count must be at least 1, got {out}")
    return out


# ----------------------------------------------------------------------------------------------
# The data root
# ----------------------------------------------------------------------------------------------

@dataclass
class _Written:
    """One generated file set: COCO images/annotations of one dataset split."""

    images: list = field(default_factory=list)
    annotations: list = field(default_factory=list)
    species: list = field(default_factory=list)   # per image


def _file_name(dataset: str, image_id: int, species: Species) -> str:
    if dataset == "ap10k":
        return f"{image_id:012d}.jpg"                     # as the AP-10K release names its images
    if dataset == "animalpose":
        return f"an{image_id:06d}.jpg"
    if dataset == "tigdog":
        return f"{species.name}/{image_id:08d}.jpg"       # TigDog: horse/..., tiger/...
    return f"u24_{image_id:06d}.jpg"


def split_species(split: str, index: int) -> Species:
    """Species of image ``index`` of a generated split: a fixed cycle, so species are balanced."""
    cycle = TIGDOG_SPECIES if split.startswith("tigdog") else tuple(s.name for s in SPECIES)
    return get_species(cycle[index % len(cycle)])


def dataset_scene(seed: int, split: str, index: int, image_size: int = 128) -> tuple[np.ndarray, list[Instance]]:
    """Image ``index`` of ``split`` (a key of :data:`SIZE_PRESETS`) exactly as :func:`generate` draws it.

    Every image has its own generator seeded by (seed, split, index), so images do not depend on
    the split sizes and the splits and datasets draw different animals.
    """
    if split not in _STREAMS or split == "label_lists":
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SIZE_PRESETS['default'])})")
    rng = np.random.default_rng([seed, _STREAMS[split], index])
    n = 2 if rng.random() < TWO_ANIMAL_PROB else 1
    return draw_scene(rng, image_size, (split_species(split, index),) * n, occlusion=OCCLUSION_PROB)


def _draw_split(layout: DataLayout, dataset: str, split: str, count: int, first_image_id: int, first_ann_id: int,
                seed: int, image_size: int, quality: int) -> _Written:
    """Draw ``count`` images of one split, write the JPEGs, return the COCO entries."""
    joint_set = DATASETS[dataset].joint_set
    fully_annotated = dataset == "ap10k_animalpose_tigdog"   # the union-24 val set with its own images
    image_dir = layout.image_dir(dataset)
    written = _Written()
    ann_id = first_ann_id
    for i in range(count):
        image, instances = dataset_scene(seed, split, i, image_size)
        sp = split_species(split, i)
        image_id = first_image_id + i
        name = _file_name(dataset, image_id, sp)
        path = image_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"could not write image {path}")
        entry = {"id": image_id, "file_name": name, "width": image_size, "height": image_size}
        if fully_annotated:
            entry["from"] = "synthetic"
        written.images.append(entry)
        written.species.append(sp)
        for inst in instances:
            written.annotations.append(_annotation(ann_id, image_id, inst, joint_set,
                                                   "synthetic" if fully_annotated else None))
            ann_id += 1
    return written


def _union_file(layout: DataLayout, union: JointSet, parts: Sequence[tuple[str, str, _Written]],
                seed: int, description: str) -> dict:
    """Convert source files (already written) to ``union`` by the joint-set maps (SPEC §2.4)."""
    images, annotations = [], []
    for source, split, written in parts:
        ann_file = layout.annotation_file(source, split)
        records = load_coco_records(ann_file, layout.image_dir(source), load_joint_set(DATASETS[source].joint_set),
                                    source=source, check_images=False)
        converted = to_union(records, union, source)
        off, name = ID_OFFSET[source], FROM_NAME[source]
        images += [{**img, "id": img["id"] + off, "from": name} for img in written.images]
        by_id = {a["id"]: a for a in written.annotations}
        for rec in converted:
            src_ann = by_id[rec.ann_id]
            kps = []
            for (x, y), v in zip(rec.keypoints.tolist(), rec.visibility.tolist()):
                kps += [round(x, 2), round(y, 2), int(v)] if v > 0 else [0, 0, 0]
            annotations.append({**src_ann, "id": rec.ann_id + off, "image_id": rec.image_id + off,
                                "num_keypoints": sum(1 for v in kps[2::3] if v > 0), "keypoints": kps,
                                "from": name})
    categories = [_category(sp, union.name) for sp in SPECIES]
    return _coco(description, seed, images, annotations, categories)


def _label_lists(records: Sequence[Record], seed: int) -> dict[int, list[int]]:
    """Nested per-species image-id lists: N images per species (fewer where a species has fewer)."""
    rng = np.random.default_rng([seed, _STREAMS["label_lists"]])
    per_species: dict[int, list[int]] = {}
    for r in records:
        ids = per_species.setdefault(r.category_id, [])
        if r.image_id not in ids:
            ids.append(r.image_id)
    shuffled = {c: [ids[j] for j in rng.permutation(len(ids))] for c, ids in sorted(per_species.items())}
    return {n: [i for c in sorted(shuffled) for i in shuffled[c][:n]] for n in LABEL_LIST_SIZES}


def generate(out_dir: str | os.PathLike, seed: int = 0, sizes: str | Mapping[str, int] | None = "default",
             image_size: int = 128, jpeg_quality: int = 92) -> dict[str, dict[str, int]]:
    """Write a complete synthetic FreeNet data root under ``out_dir`` (SPEC §3.1, §3.3).

    Files (counts from ``sizes``: a preset of :data:`SIZE_PRESETS` or a mapping over ``default``):

    * ``ap_10k/annotations/ap10k-{train,val,test}-split1.json`` + ``ap_10k/data/`` (17 joints),
    * ``animal_pose/annotations/animal_pose_{train,val}.json`` + ``animal_pose/data/`` (20 joints,
      FreeNet order),
    * ``tigdog/annotations/tigdog_{train,val}.json`` + ``tigdog/data/{horse,tiger}/`` (19 joints),
    * ``ap10k_animalpose/annotations/ap_10k_animal_pose_union_{train,val}.json`` (21 joints) and
      ``ap10k_animalpose_tigdog/annotations/ap10k_animalpose_tigdog_train.json`` (24): the source
      records converted by the joint-set maps, ids offset per source (:data:`ID_OFFSET`), images
      read from the source folders;
    * ``ap10k_animalpose_tigdog/annotations/ap10k_animalpose_tigdog_val.json``: its own images in
      ``ap10k_animalpose_tigdog/data/`` with every union-24 joint annotated that is in the image
      and not occluded;
    * ``info/missing_keypoints_anns_info_level_{0,1}.json`` (AP-10K train, presets level0/level1),
      ``info/label_list/annotation_list_{5,10,25}.json`` and ``info/25_5_imgs_keypoints_anns_info.json``.

    Each dataset draws its own animals (disjoint images). Files of the same names are overwritten;
    nothing else under ``out_dir`` is removed. Returns ``{relative path: counts}``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    sizes = resolve_sizes(sizes)
    for source in ("ap10k", "animalpose", "tigdog"):
        # Two annotations per image at most; union files offset source ids by ID_OFFSET steps.
        if 2 * sum(n for k, n in sizes.items() if k.startswith(source + "_")) >= ID_OFFSET["animalpose"]:
            raise ValueError(f"too many {source} images for the union id offsets {ID_OFFSET}: {sizes}")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a synthetic FreeNet data root (freenet.data.synthetic.generate)\n")
    layout = DataLayout(out)
    summary: dict[str, dict[str, int]] = {}
    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731

    def write_coco(dataset: str, split: str, data: dict) -> None:
        path = layout.annotation_file(dataset, split)
        write_json_atomic(path, data)
        summary[rel(path)] = {"images": len(data["images"]), "annotations": len(data["annotations"])}

    sources: dict[tuple[str, str], _Written] = {}
    plan = [("ap10k", "train"), ("ap10k", "val"), ("ap10k", "test"), ("animalpose", "train"),
            ("animalpose", "val"), ("tigdog", "train"), ("tigdog", "val")]
    next_id = {d: [1, 1] for d, _ in plan}  # (image id, annotation id), unique across a dataset's splits
    for dataset, split in plan:
        key = f"{dataset}_{split}"
        written = _draw_split(layout, dataset, key, sizes[key], *next_id[dataset], seed, image_size, jpeg_quality)
        next_id[dataset] = [written.images[-1]["id"] + 1, written.annotations[-1]["id"] + 1]
        used = {sp.id for sp in written.species}
        cats = [_category(sp, DATASETS[dataset].joint_set) for sp in SPECIES if sp.id in used]
        title = DATASETS[dataset].title
        write_coco(dataset, split, _coco(f"Synthetic quadrupeds in the {title} format ({split})", seed,
                                         written.images, written.annotations, cats))
        sources[(dataset, split)] = written

    # Union files: the source records converted by the joint-set maps.
    u21, u24 = load_joint_set("union21"), load_joint_set("union24")
    for split in ("train", "val"):
        parts = [(s, split, sources[(s, split)]) for s in ("ap10k", "animalpose")]
        write_coco("ap10k_animalpose", split, _union_file(
            layout, u21, parts, seed, f"Synthetic AP-10K + AnimalPose union, 21 joints ({split})"))
    parts = [(s, "train", sources[(s, "train")]) for s in ("ap10k", "animalpose", "tigdog")]
    write_coco("ap10k_animalpose_tigdog", "train", _union_file(
        layout, u24, parts, seed, "Synthetic AP-10K + AnimalPose + TigDog union, 24 joints (train)"))

    # The fully annotated union-24 val set, with its own images.
    first = ID_OFFSET["union24_val"] + 1
    written = _draw_split(layout, "ap10k_animalpose_tigdog", "union24_val", sizes["union24_val"], first, first,
                          seed, image_size, jpeg_quality)
    write_coco("ap10k_animalpose_tigdog", "val", _coco(
        "Synthetic quadrupeds, all 24 union joints annotated (val)", seed, written.images, written.annotations,
        [_category(sp, UNION) for sp in SPECIES]))

    # Split files and label lists (SPEC §3.3), from the AP-10K train records as loaded.
    info = out / "info"
    train = layout.load("ap10k", "train", check_images=False)
    for level in (0, 1):
        entries = generate_missing_joint_split(train, **SPLIT_PRESETS[f"level{level}"], seed=seed)
        path = info / f"missing_keypoints_anns_info_level_{level}.json"
        write_split_file(path, entries)
        summary[rel(path)] = {"entries": len(entries)}
    lists = _label_lists(train, seed)
    for n, ids in lists.items():
        path = info / "label_list" / f"annotation_list_{n}.json"
        write_json_atomic(path, ids)
        summary[rel(path)] = {"images": len(ids)}
    entries = generate_missing_joint_split(filter_by_image_ids(train, lists[25]), **SPLIT_PRESETS["25_5"], seed=seed)
    path = info / "25_5_imgs_keypoints_anns_info.json"
    write_split_file(path, entries)
    summary[rel(path)] = {"entries": len(entries)}
    logger.debug("synthetic data root %s written in %.1f s", out, time.perf_counter() - t0)
    return summary
