"""Labeled subsets for FreeNet training, seeded, in the FreeNet authors' file formats.

    # missing-joint split file (what DATASET.SPLIT_FILE / --anns-info-path read)
    python tools/make_splits.py missing-joints --ann ap10k-train-split1.json --joints ap10k --preset level0 \\
        --out info/missing_keypoints_anns_info_level_0.json
    python tools/make_splits.py missing-joints --ann my_train.json --joints ap10k \\
        --family front=L_F_hip,L_F_knee,L_F_paw,R_F_hip,R_F_knee,R_F_paw --family back=11-16 --shared 0-4 \\
        --out my_split.json
    # N images per category (what DATASET.LABEL_LIST reads); several N give nested lists
    python tools/make_splits.py per-category --ann ap10k-train-split1.json --n 5 10 25 --out-dir info/label_list
    # a random fraction of the pooled annotations: PREFIX_img_ids.json and PREFIX_img_ann_ids.json
    python tools/make_splits.py ratio --ann ap10k-train-split1.json animal_pose_train.json --ratio 0.1 \\
        --out-prefix info/random_0.1

Every command takes --seed (default 2). Instances are those the training loads.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from freenet.data.checks import file_joint_names
from freenet.data.coco import file_joint_order, load_coco_json, load_coco_records
from freenet.data.splits import (SPLIT_PRESETS, collision_offsets, filter_by_image_ids,
                                 generate_missing_joint_split, image_categories, load_id_list, offset_records,
                                 parse_family, parse_joint_list, ratio_id_files, sample_by_ratio,
                                 sample_per_category, write_id_list, write_split_file)
from freenet.errors import DataError, exit_with_error
from freenet.fileio import write_json_atomic
from freenet.joints import JointSetError, available_joint_sets, load_joint_set


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("missing-joints", help="split file: each instance keeps one joint family + shared joints")
    m.add_argument("--ann", required=True, help="COCO keypoint file (the training annotations)")
    m.add_argument("--joints", default=None,
                   help="joint set (bundled name or JSON) the file is written in; default: the file's category names")
    how = m.add_mutually_exclusive_group(required=True)
    how.add_argument("--preset", choices=sorted(SPLIT_PRESETS),
                     help="the authors' AP-10K settings: level0 (5 shared joints), level1 (9), 25_5 (head/front/back)")
    how.add_argument("--family", action="append", metavar="NAME=JOINTS",
                     help="a joint family, e.g. front=5-10 or front=L_F_hip,L_F_knee (repeat for each family)")
    m.add_argument("--shared", default="", help="joints every instance keeps (with --family), e.g. 0-4")
    m.add_argument("--images", default=None, help="image-id list (JSON): split only these images' instances")
    m.add_argument("--out", required=True, help="split file to write")

    c = sub.add_parser("per-category", help="image-id lists with N images per category")
    c.add_argument("--ann", required=True, help="COCO keypoint file")
    c.add_argument("--n", type=int, nargs="+", required=True, help="images per category (several: one list each)")
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="list file to write (one N)")
    where.add_argument("--out-dir", help="folder for annotation_list_{N}.json")
    c.add_argument("--independent", action="store_true",
                   help="draw each N on its own (the authors' lists) instead of nested lists")

    r = sub.add_parser("ratio", help="random fraction of the pooled annotations, drawn like the mixed training scripts")
    r.add_argument("--ann", nargs="+", required=True, help="COCO keypoint files, pooled in this order")
    r.add_argument("--ratio", type=float, required=True, help="labeled fraction, e.g. 0.1")
    r.add_argument("--out-prefix", required=True, help="writes PREFIX_img_ids.json and PREFIX_img_ann_ids.json")
    r.add_argument("--offsets", nargs="+", default=None, metavar="IMG:ANN",
                   help="id offsets per file (default: none, or past the previous files' ids when they collide); "
                        "the authors' union numbering is 0:0 58632:16561 63240:22678")

    for q in (m, c, r):
        q.add_argument("--seed", type=int, default=2, help="seed of the random choices (default: 2, the training seed)")
    return p.parse_args(argv)


def load_records(ann: str, joint_set=None):
    return load_coco_records(ann, "", joint_set, check_images=False)


def refuse_ambiguous_order(ann: str, data: dict, num_joints: int) -> None:
    """Without ``--joints`` the split's joints are in the file's order, but training reads a file in
    its joint set's order: a file whose categories name a bundled set's joints in another order (an
    AnimalPose file, which ``animalpose`` and ``animalpose_mmpose`` order differently) is read in
    either order, depending on the set the training config names. Such a file needs ``--joints``."""
    orders = {name: file_joint_order(ann, data, load_joint_set(name)) for name in available_joint_sets()
              if load_joint_set(name).num_joints == num_joints}
    other = [name for name, (source, _) in orders.items() if source is not None]
    same = [name for name, order in orders.items() if order == (None, "")]
    if other:
        raise ValueError(f"{ann}: its categories name the joints of joint set {' and '.join(other)} in another "
                         "order" + (f" (and of {' and '.join(same)} in this one)" if same else "") + ", and "
                         "training reads a file in its joint set's order: give --joints with the joint set your "
                         "training uses (its DATASET.JOINTS); the split is written in that set's order")


def missing_joints(args) -> dict:
    joint_set = load_joint_set(args.joints) if args.joints else None
    records = load_records(args.ann, joint_set)
    if not records:
        raise DataError(args.ann, "no annotated instances to split")
    num_joints = records[0].num_joints
    if joint_set:
        names = list(joint_set.joints)
    else:
        data = load_coco_json(args.ann)
        refuse_ambiguous_order(args.ann, data, num_joints)
        names = file_joint_names(data, num_joints)
    if args.preset:
        if args.shared:
            raise ValueError("--shared goes with --family; a preset fixes its shared joints")
        if num_joints != 17:
            raise ValueError(f"preset '{args.preset}' uses AP-10K joint indices (17 joints); {args.ann} has "
                             f"{num_joints}: give --family and --shared instead")
        families, shared = SPLIT_PRESETS[args.preset]["families"], SPLIT_PRESETS[args.preset]["shared"]
    else:
        families = dict(parse_family(f, names, num_joints) for f in args.family)
        if len(families) != len(args.family):
            raise ValueError("two --family options have the same name")
        shared = parse_joint_list(args.shared, names, num_joints)
    if args.images:
        records = filter_by_image_ids(records, load_id_list(args.images), args.images)
    entries, drawn = generate_missing_joint_split(records, families, shared, args.seed, return_families=True)
    write_split_file(args.out, entries)

    counts = Counter(drawn)
    images = len({e["image_id"] for e in entries})
    print(f"wrote {args.out}: {len(entries)} instances of {images} images (seed {args.seed})")
    for family, joints in families.items():
        print(f"  {family:>10s}: {counts[family]:6d} instances keep " + ", ".join(names[j] for j in joints))
    print(f"  {'shared':>10s}: " + (", ".join(names[j] for j in shared) or "none"))
    return {"entries": len(entries), "families": {f: counts[f] for f in families}}


def per_category(args) -> dict:
    records = load_records(args.ann)
    if args.out and len(args.n) > 1:
        raise ValueError("several --n values need --out-dir (one annotation_list_{N}.json each)")
    lists = sample_per_category(records, args.n, args.seed, nested=not args.independent)
    images_per_category = Counter(image_categories(records).values())
    written = {}
    for n, ids in lists.items():
        path = Path(args.out) if args.out else Path(args.out_dir) / f"annotation_list_{n}.json"
        write_id_list(path, ids)
        short = sorted(c for c, k in images_per_category.items() if k < n)
        note = f"; {len(short)} categories have fewer than {n} images (all taken): {short}" if short else ""
        print(f"wrote {path}: {len(ids)} images, {n} per category over {len(images_per_category)} categories{note}")
        written[n] = {"path": str(path), "images": len(ids)}
    return written


def ratio(args) -> dict:
    pools = [load_records(a) for a in args.ann]
    if args.offsets is not None:
        if len(args.offsets) != len(pools):
            raise ValueError(f"--offsets needs one IMG:ANN per file ({len(pools)}), got {len(args.offsets)}")
        offsets = [tuple(int(v) for v in o.split(":")) for o in args.offsets]
        if any(len(o) != 2 for o in offsets):
            raise ValueError(f"--offsets are IMG:ANN pairs, got {args.offsets}")
    else:
        offsets = collision_offsets(pools)
        if offsets is not None:
            print("image/annotation ids collide between the files; offsetting them: "
                  + ", ".join(f"{a} +{i}/+{n}" for a, (i, n) in zip(args.ann, offsets)))
    if offsets is not None:
        pools = [offset_records(pool, *o) for pool, o in zip(pools, offsets)]
    labeled, unlabeled = sample_by_ratio(pools, args.ratio, args.seed)
    img_ids, img_ann_ids = ratio_id_files(labeled)
    ids_path, ann_path = Path(f"{args.out_prefix}_img_ids.json"), Path(f"{args.out_prefix}_img_ann_ids.json")
    write_id_list(ids_path, img_ids)
    write_json_atomic(ann_path, img_ann_ids)
    total = sum(len(p) for p in pools)
    print(f"drew {len(labeled)} of {total} annotations ({args.ratio:g}, seed {args.seed}) from "
          + ", ".join(f"{a} ({len(p)})" for a, p in zip(args.ann, pools)))
    print(f"wrote {ids_path} ({len(img_ids)} images) and {ann_path}")
    return {"labeled": len(labeled), "unlabeled": len(unlabeled), "images": len(img_ids), "offsets": offsets}


COMMANDS = {"missing-joints": missing_joints, "per-category": per_category, "ratio": ratio}


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, JointSetError, ValueError, FileNotFoundError) as e:
        exit_with_error(f"make_splits.py {args.command}: {e}")


if __name__ == "__main__":
    main()
