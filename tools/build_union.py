"""Build a joint union from several COCO keypoint files and convert them onto it.

    python tools/build_union.py --out unions/tiger_horse --name tiger_horse \
        --source ap10k=data/ap_10k/annotations/ap10k-train-split1.json:data/ap_10k/data \
        --source atrw=atrw/annotations/keypoint_train.json:atrw/images/train \
        --source horse10=horse10/train.json:horse10/images \
        --val ap10k=data/ap_10k/annotations/ap10k-val-split1.json:data/ap_10k/data

Joint names are matched through the joint dictionary (resources/joints/aliases.json); the report
says which joints of each file land on which union joint and which are new. Writes OUT/NAME.json
(the joint set), OUT/annotations/train.json (+ val.json), OUT/config.yaml and OUT/report.txt; then
the base network (the teacher's initialisation), FreeNet, and its evaluation:

    python train_supervised.py --cfg OUT/config.yaml --save-as pretrained_weights/tiger_horse_sl.pth
    python train_ap10k_animalpose_tigdog.py --cfg OUT/config.yaml --pretrained-weights-name tiger_horse_sl.pth
    python eval_ap10k.py --cfg OUT/config.yaml TEST.MODEL_FILE RUN/best-oks.pth
"""
from __future__ import annotations

import argparse
import sys

from freenet.errors import USER_ERROR_EXIT, DataError
from freenet.joints import JointSetError, load_joint_set
from freenet.unions import SourceFile, UnionError, make_union_folder, parse_rename


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write (its images resolve every source's images)")
    p.add_argument("--name", required=True, help="union name (the joint-set file is OUT/NAME.json)")
    p.add_argument("--source", action="append", default=[], metavar="NAME=TRAIN_JSON[:IMAGE_DIR]",
                   help="a training file, in union order (the first source's joints come first); "
                        "IMAGE_DIR defaults to the file's folder")
    p.add_argument("--val", action="append", default=[], metavar="NAME=VAL_JSON[:IMAGE_DIR]",
                   help="a validation file of one of the sources")
    p.add_argument("--like", default=None,
                   help="template joint set (bundled name or file) whose loss weights, sigmas, body halves, part "
                        "and logging groups replace the dictionary's for the joints it names, e.g. union24")
    p.add_argument("--rename", action="append", default=[], metavar="SRC:JOINT=UNION_JOINT",
                   help="map a source joint onto a union joint of your choice (a FreeNet name, or a new name)")
    p.add_argument("--labeled", choices=("ratio", "all"), default="ratio",
                   help="config: a seeded ratio of the pooled records labeled (FreeNet's mixed setting) or all")
    p.add_argument("--sample-ratio", type=float, default=0.1, help="config: labeled fraction for --labeled ratio")
    p.add_argument("--no-check-images", dest="check_images", action="store_false",
                   help="do not look for the image files")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train = [SourceFile.parse(s) for s in args.source]
        val = [SourceFile.parse(s) for s in args.val]
        renames = dict(parse_rename(r) for r in args.rename)
        like = load_joint_set(args.like) if args.like else None
        built = make_union_folder(args.out, args.name, train, val, like, renames, labeled=args.labeled,
                                  sample_ratio=args.sample_ratio, check_images=args.check_images)
    except (UnionError, DataError, JointSetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(built.report_file.read_text(), end="")
    for split, stats in (("train", built.train_stats), ("val", built.val_stats)):
        for st in stats:
            line = (f"{split} {st.source}: {st.images} images, {st.annotations} annotations "
                    f"(ids + {st.image_id_offset} / + {st.annotation_id_offset})")
            if st.missing_images:
                line += f"; WARNING {len(st.missing_images)} image files not found, e.g. {st.missing_images[0]}"
            if st.images_without_size:
                line += f"; {st.images_without_size} images lack width/height (evaluation needs them)"
            if st.unlisted_categories:
                line += (f"; category ids {sorted(set(st.unlisted_categories))} are not listed in the file "
                         f"(kept as categories '{st.source}_<id>')")
            print(line)
    if built.val_file is None:
        print("no --val files: config.yaml evaluates on the training file")
    for path in (built.joint_set_file, built.train_file, built.val_file, built.config_file, built.report_file):
        if path is not None:
            print(f"wrote {path}")
    base = f"{built.joint_set_file.stem}_sl.pth"
    print(f"train the base network: python train_supervised.py --cfg {built.config_file} "
          f"--save-as pretrained_weights/{base}")
    print(f"then FreeNet: python train_ap10k_animalpose_tigdog.py --cfg {built.config_file} "
          f"--pretrained-weights-name {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
