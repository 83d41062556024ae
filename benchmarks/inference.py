"""Single-image latency of ``freenet.inference.predict`` (crop, network, decode, back-projection).

    python benchmarks/inference.py                    # HRNet-W32, 256 px, CPU
    python benchmarks/inference.py --flip
    python benchmarks/inference.py --no-fold          # BatchNorm kept as its own layers (A/B)
"""
import numpy as np
import torch

from common import base_parser, describe, emit, pick_device, time_it
from freenet.data.synthetic import draw_animal
from freenet.inference import predict
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet, fold_batchnorm


def main():
    p = base_parser(__doc__)
    p.set_defaults(device="cpu", repeat=10)
    p.add_argument("--width", type=int, default=32, help="HRNet width")
    p.add_argument("--size", type=int, default=256, help="input crop side")
    p.add_argument("--flip", action="store_true", help="flip test (two forward passes)")
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm unfolded (load_pose_model(fold=False))")
    args = p.parse_args()
    device = pick_device(args.device)
    js = load_joint_set("union24")
    image, _, _, _ = draw_animal(np.random.default_rng(0), image_size=480)
    model = PoseHighResolutionNet(js.num_joints, args.width).to(device, memory_format=torch.channels_last).eval()
    if not args.no_fold:
        model = fold_batchnorm(model)     # what load_pose_model returns
    t = time_it(lambda: predict(model, image, None, args.flip, device, js, args.size), device, args.repeat,
                args.warmup)
    emit({"benchmark": "inference", "device": describe(device), "width": args.width, "size": args.size,
          "flip": args.flip, "folded": not args.no_fold, "latency_ms": round(1000 * t["median_s"], 1)})


if __name__ == "__main__":
    main()
