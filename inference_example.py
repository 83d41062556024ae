"""Predict and draw the pose of one animal in one image (top-down, as in evaluation; runs on CPU).

    python inference_example.py --image test.jpg --weights model.pth --out out.png --json out.json
    python inference_example.py --image test.jpg --weights model.pth --box 40 60 300 200 --flip

The joint set and network width are read off the checkpoint (``--joints`` names another set).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import cv2

from freenet.checkpoint import load_checkpoint
from freenet.cli import USER_ERRORS
from freenet.data.dataset import read_image
from freenet.errors import DataError
from freenet.device import resolve_device
from freenet.inference import draw_pose, load_pose_model, pose_to_dict, predict, trained_input_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", required=True)
    p.add_argument("--weights", required=True, help="checkpoint (state_dict or a FreeNet/HRNet checkpoint)")
    p.add_argument("--joints", default=None, help="joint-set name or file (default: inferred from the checkpoint)")
    p.add_argument("--key", default="", help="checkpoint key holding the weights (default: searched)")
    p.add_argument("--box", type=float, nargs=4, metavar=("X", "Y", "W", "H"), help="animal box (default: whole image)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--size", type=int, default=None,
                   help="input crop size (default: the training checkpoint's, else 256)")
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--threshold", type=float, default=0.4, help="draw joints scoring at least this")
    p.add_argument("--out", default="out.png", help="picture with the pose drawn")
    p.add_argument("--json", default=None, help="also write the keypoints here")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.weights)       # read once: weights, joint set and input size
        model, joint_set, _ = load_pose_model(args.weights, args.joints, args.key, device, checkpoint)
        trained = trained_input_size(checkpoint)
        size = args.size or trained or 256
        if not os.path.isfile(args.image):  # said before OpenCV logs a warning of its own
            raise DataError(args.image, "image file not found")
        image = read_image(args.image)
        keypoints, scores = predict(model, image, args.box, args.flip, device, joint_set, size)
    except (*USER_ERRORS, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    picture = draw_pose(image, keypoints, scores, joint_set, args.threshold, args.box)
    if not cv2.imwrite(args.out, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        print(f"error: could not write {args.out}", file=sys.stderr)
        return 2
    result = pose_to_dict(keypoints, scores, joint_set, args.threshold, args.image, args.box)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"input {size} px" + ("" if args.size or trained else
                                " (the default: the checkpoint records no training size; --size sets it)"))
    for k in result["keypoints"]:
        print(f"{k['name']:<12} x {k['x']:8.1f}  y {k['y']:8.1f}  score {k['score']:.3f}")
    print(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
