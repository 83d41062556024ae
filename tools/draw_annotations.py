"""Draw the ground truth (or predictions) of a COCO keypoint file on its images: a contact-sheet PNG.

    python tools/draw_annotations.py my_val.json --images my_images/ --out sheet.png
    python tools/draw_annotations.py data/ap_10k/annotations/ap10k-val-split1.json --images data/ap_10k/data \\
        --results output/eval/results.json --max 24 --cols 6 --names --out predictions.png

One tile per instance (its box padded 1.25x; --whole for whole images), the skeleton and joints
coloured by body part (face yellow, front legs green, back legs blue, the rest magenta/grey), and
a caption: image id, annotation id, category (and the prediction's score).
"""
from __future__ import annotations

import argparse
import sys

from freenet.data.drawing import draw_contact_sheet
from freenet.errors import DataError, exit_with_error
from freenet.joints import JointSetError, load_joint_set
from freenet.plots import save_rgb


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="COCO keypoint annotation file")
    p.add_argument("--images", nargs="+", required=True, metavar="DIR", help="image folder(s), tried in order")
    p.add_argument("--results", default=None, help="COCO keypoint results (e.g. eval_ap10k.py's results.json)")
    p.add_argument("--joints", default=None, help="joint set (bundled name or JSON); default: guessed from the file")
    p.add_argument("--ids", type=int, nargs="+", default=None, help="only these image ids")
    p.add_argument("--ann-ids", type=int, nargs="+", default=None, help="only these annotation ids")
    p.add_argument("--max", type=int, default=16, help="tiles on the sheet")
    p.add_argument("--cols", type=int, default=4, help="tiles per row")
    p.add_argument("--tile", type=int, default=256, help="tile side in px")
    p.add_argument("--seed", type=int, default=None, help="draw a seeded random choice instead of the first --max")
    p.add_argument("--whole", action="store_true", help="whole images (all their instances) instead of crops")
    p.add_argument("--names", action="store_true", help="write joint names beside the markers")
    p.add_argument("--threshold", type=float, default=0.4, help="predicted joints scoring below are not drawn")
    p.add_argument("--out", required=True, help="PNG to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        joint_set = load_joint_set(args.joints) if args.joints else None
        sheet, tiles = draw_contact_sheet(args.file, args.images, args.results, joint_set=joint_set,
                                          image_ids=args.ids, ann_ids=args.ann_ids, max_tiles=args.max,
                                          cols=args.cols, tile_size=args.tile, whole=args.whole, names=args.names,
                                          threshold=args.threshold, seed=args.seed)
        save_rgb(args.out, sheet)
    except (DataError, JointSetError, FileNotFoundError, OSError) as e:
        exit_with_error(f"draw_annotations.py: {e}")
    print(f"wrote {args.out}: {len(tiles)} tiles, {sheet.shape[1]}x{sheet.shape[0]} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
