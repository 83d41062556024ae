"""Write a synthetic FreeNet data root: cartoon quadrupeds in the AP-10K, AnimalPose and TigDog
formats, the union files, a fully annotated union-24 val set, split files and label lists.

    python tools/make_synthetic_data.py --out data_synthetic            # ~1.1k images, 5-20 s
    python tools/make_synthetic_data.py --out /tmp/tiny --preset tiny   # a handful, for tests

Then point a config at it with ``DATASET.ROOT data_synthetic`` (or ``--data-root``).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from freenet.data.synthetic import MARKER, SIZE_PRESETS, generate
from freenet.errors import exit_with_error


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="data root to write (the layout of README, Data): a new or empty "
                                                "folder, or an earlier synthetic root (its files are replaced)")
    p.add_argument("--force", action="store_true", help="write into a folder that holds other files too "
                                                        "(files of the same names, real ones included, are replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawings, splits and label lists (default: 0)")
    p.add_argument("--preset", choices=sorted(SIZE_PRESETS), default="default", help="image counts per split")
    p.add_argument("--images-per-dataset", type=int, default=None,
                   help="train images per source dataset (val/test get a quarter, the union-24 val set a half)")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels")
    p.add_argument("--jpeg-quality", type=int, default=92)
    return p.parse_args(argv)


def sizes_from_args(args: argparse.Namespace) -> dict[str, int]:
    sizes = dict(SIZE_PRESETS[args.preset])
    n = args.images_per_dataset
    if n is not None:
        for key in sizes:
            sizes[key] = n if key.endswith("_train") else max(1, n // 2 if key == "union24_val" else n // 4)
    return sizes


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        exit_with_error(f"make_synthetic_data.py: --out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not args.force:
        found = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        exit_with_error(f"make_synthetic_data.py: --out {out} holds files that are not a synthetic data root's "
                        f"({found}): its annotation, split and image files of the same names would be replaced; "
                        f"give a new or empty folder, or --force")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    summary = generate(args.out, seed=args.seed, sizes=sizes_from_args(args), image_size=args.image_size,
                       jpeg_quality=args.jpeg_quality)
    for path, counts in summary.items():
        print(f"{path:80s} " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return summary


if __name__ == "__main__":
    main()
