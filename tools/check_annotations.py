"""Check a COCO keypoint file before training on it, and print its statistics.

    python tools/check_annotations.py my_train.json --images my_images/
    python tools/check_annotations.py data/ap10k_animalpose/annotations/ap_10k_animal_pose_union_val.json \\
        --images data/ap_10k/data data/animal_pose/data --joints union21 --json report.json

Reports every problem with the file, the image or annotation id and the field: malformed JSON,
duplicate ids, unknown images or categories, keypoint counts, visibility values, labeled joints at
(0, 0) or outside the image, boxes, num_keypoints, missing or undecodable images. Exit code 1 when
there are errors, 0 with only warnings, 2 when --joints does not load.
"""
from __future__ import annotations

import argparse
import json
import sys

from freenet.cli import file_path
from freenet.data.checks import check_coco_file
from freenet.errors import USER_ERROR_EXIT
from freenet.fileio import write_atomic
from freenet.joints import JointSetError, load_joint_set


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="COCO keypoint annotation file")
    p.add_argument("--images", nargs="+", default=None, metavar="DIR",
                   help="image folder(s) file_name is relative to, tried in order (default: images not opened)")
    p.add_argument("--no-images", action="store_true", help="do not open the images even with --images")
    p.add_argument("--joints", default=None,
                   help="joint set (bundled name or JSON) every annotation must match; default: the categories")
    p.add_argument("--json", type=file_path, default=None, metavar="OUT",
                   help="write the full report (every issue, statistics); its folder is made")
    p.add_argument("--show", type=int, default=5, help="issues printed per kind")
    p.add_argument("--workers", type=int, default=8, help="threads decoding images")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        joint_set = load_joint_set(args.joints) if args.joints else None
    except (JointSetError, OSError) as e:
        print(f"check_annotations.py: --joints: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    report = check_coco_file(args.file, args.images, joint_set, check_images=not args.no_images,
                             workers=args.workers, progress=sys.stderr.isatty())
    print(report.format(args.show))
    if args.json:
        write_atomic(args.json, lambda f: json.dump(report.to_dict(), f, indent=1, default=str))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
