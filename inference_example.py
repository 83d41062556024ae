"""Predict and draw the pose of one animal in one image (top-down, as in evaluation; runs on CPU).

    python inference_example.py --image test.jpg --weights model.pth --out out.png --json out.json
    python inference_example.py --image test.jpg --weights model.pth --box 40 60 300 200 --flip

The network width is read off the checkpoint; the joint set and input size are the training run's
(the checkpoint's stored config, else the run's config.yaml beside the weights) unless
``--joints`` / ``--size`` say otherwise.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2

from freenet.checkpoint import load_checkpoint
from freenet.cli import USER_ERRORS, HelpFormatter, Parser, crop_size, prepare_outputs
from freenet.data.dataset import read_image
from freenet.device import resolve_device
from freenet.errors import USER_ERROR_EXIT, DataError
from freenet.fileio import write_json_atomic
from freenet.inference import (RUN_CONFIG, describe_weights, draw_pose, load_pose_model, pose_to_dict, predict,
                               training_record)
from freenet.plots import save_rgb


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--image", required=True, help="picture to read (any format OpenCV reads)")
    p.add_argument("--weights", required=True, help="checkpoint (state_dict or a FreeNet/HRNet checkpoint)")
    p.add_argument("--joints", default=None, help="joint-set name or file (default: the training run's, else the "
                                                  "bundled set of the checkpoint's joint count)")
    p.add_argument("--key", default="", help="checkpoint key holding the weights (default: the first of "
                                             "teacher_model, student_model, state_dict, model)")
    p.add_argument("--box", type=float, nargs=4, metavar=("X", "Y", "W", "H"), help="animal box (default: whole image)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--size", type=crop_size, default=None,
                   help="input crop size (default: the training run's, else 256)")
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--threshold", type=float, default=0.4,
                   help='draw joints scoring at least this; in --json, "visible" says whether a joint does '
                        '(false: scored below it, not a visibility prediction)')
    p.add_argument("--out", default="out.png", help="picture with the pose drawn")
    p.add_argument("--json", default=None, help="also write the keypoints here")
    args = p.parse_args(argv)
    try:
        prepare_outputs(args.out, args.json)
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.weights)       # read once: weights, joint set and input size
        model, joint_set, key = load_pose_model(args.weights, args.joints, args.key, device, checkpoint)
        trained = training_record(checkpoint, args.weights)  # the stored config, else the run's config.yaml
        size = args.size or trained.input_size or 256
        if not os.path.isfile(args.image):  # said before OpenCV logs a warning of its own
            raise DataError(args.image, "image file not found")
        image = read_image(args.image)
        keypoints, scores = predict(model, image, args.box, args.flip, device, joint_set, size)
    except (*USER_ERRORS, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    result = pose_to_dict(keypoints, scores, joint_set, args.threshold, args.image, args.box)
    print(f"weights: {args.weights}: {describe_weights(checkpoint, key, args.key, '--key')}")
    if args.size:
        origin = ""
    elif trained.input_size:
        origin = f" (from {trained.source})"
    else:
        origin = (f" (the default: neither the checkpoint nor {Path(args.weights).parent / RUN_CONFIG} records a "
                  "training size; --size sets it)")
    print(f"joint set {joint_set.name}, input {size} px{origin}")
    for k in result["keypoints"]:  # printed first: a failed write below loses no prediction
        print(f"{k['name']:<12} x {k['x']:8.1f}  y {k['y']:8.1f}  score {k['score']:.3f}")
    path = args.out
    try:
        save_rgb(path, draw_pose(image, keypoints, scores, joint_set, args.threshold, args.box))
        if args.json:
            path = args.json
            write_json_atomic(path, result, indent=2)
    except (cv2.error, OSError) as e:  # e.g. a full disk, or a folder made read-only since the start
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[-1]
        print(f"error: {path}: cannot write it ({reason})", file=sys.stderr)
        return USER_ERROR_EXIT
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
