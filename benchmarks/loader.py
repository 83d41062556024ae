"""Throughput of the two-view training transform (SPEC §4) on 640x480-ish JPEGs, per worker.

Decode once, half body, affine crop, flip, heatmap targets, photometric aug view — what one
loader worker does per labeled sample — measured in one process (= samples/s per worker).

    python benchmarks/loader.py                      # 256-px crops, 24 joints
    python benchmarks/loader.py --size 64
"""
import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import emit
from freenet.data.dataset import KeypointDataset, read_image
from freenet.data.records import Record
from freenet.data.synthetic import draw_animal
from freenet.data.transforms import AugmentConfig, TwoViewTransform
from freenet.joints import load_joint_set


def make_images(folder: Path, count: int, rng) -> list[Record]:
    """Synthetic animals drawn at 640x480 and saved as JPEG (quality 92, like typical datasets)."""
    records = []
    for i in range(count):
        image, kps, vis, box = draw_animal(rng, image_size=480, species=("cat", "dog", "horse")[i % 3])
        canvas = np.zeros((480, 640, 3), np.uint8)
        canvas[:, 80:560] = image
        kps = kps + np.array([80, 0], np.float32)
        box = np.array([box[0] + 80, box[1], box[2], box[3]], np.float32)
        path = folder / f"{i:04d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        records.append(Record(str(path), i, i, 1, box, kps.astype(np.float32), vis.astype(np.float32), "synthetic"))
    return records


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="input crop side")
    p.add_argument("--images", type=int, default=32, help="synthetic JPEGs written to draw from")
    p.add_argument("--samples", type=int, default=300, help="samples timed per setting")
    args = p.parse_args()
    cv2.setNumThreads(1)  # one loader worker = one core
    js = load_joint_set("union24")
    with tempfile.TemporaryDirectory() as tmp:
        records = make_images(Path(tmp), args.images, np.random.default_rng(0))
        aug = AugmentConfig(input_size=args.size, heatmap_size=args.size // 4)
        for name, transform in (("labeled", TwoViewTransform(js, aug)),
                                ("unlabeled", TwoViewTransform(js, aug, with_target=False))):
            ds = KeypointDataset(records, transform, seed=0)
            for i in range(10):
                ds[(i % len(ds), i)]
            t0 = time.perf_counter()
            for i in range(args.samples):
                ds[(i % len(ds), i)]
            dt = (time.perf_counter() - t0) / args.samples
            emit({"benchmark": "loader", "stream": name, "image": "640x480 jpeg", "crop": args.size,
                  "joints": js.num_joints, "ms_per_sample": round(1000 * dt, 2),
                  "samples_per_s_per_worker": round(1 / dt, 1)})
        decode = time_decode(records, args.samples)
        emit({"benchmark": "loader_decode_only", "image": "640x480 jpeg", "ms_per_image": round(1000 * decode, 2)})


def time_decode(records, n):
    t0 = time.perf_counter()
    for i in range(n):
        read_image(records[i % len(records)].image_path)
    return (time.perf_counter() - t0) / n


if __name__ == "__main__":
    main()
