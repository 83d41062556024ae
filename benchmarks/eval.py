"""Evaluation throughput (SPEC §11): images/s with flip test, first call (decode + crops) and
later calls (crops cached, as inside training).

    python benchmarks/eval.py                         # HRNet-W32, 256 px, 64 synthetic val images
    python benchmarks/eval.py --width 8 --size 64 --device cpu
"""
import tempfile
import time
from pathlib import Path

import torch

from common import base_parser, describe, emit, pick_device, sync
from freenet.data.synthetic import generate
from freenet.evaluation import EvalSettings, Evaluator
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet


def main():
    p = base_parser(__doc__)
    p.add_argument("--width", type=int, default=32, help="HRNet width")
    p.add_argument("--size", type=int, default=256, help="input crop side")
    p.add_argument("--images", type=int, default=64, help="union-24 val images (synthetic, 256 px)")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA)")
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm unfolded (Evaluator(..., fold=False))")
    args = p.parse_args()
    device = pick_device(args.device)
    js = load_joint_set("union24")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root, seed=0, sizes={**{k: 1 for k in ("ap10k_train", "ap10k_val", "ap10k_test", "animalpose_train",
                                                        "animalpose_val", "tigdog_train", "tigdog_val")},
                                      "union24_val": args.images}, image_size=256)
        ann = root / "ap10k_animalpose_tigdog" / "annotations" / "ap10k_animalpose_tigdog_val.json"
        settings = EvalSettings(input_size=args.size, heatmap_size=args.size // 4, batch_size=args.batch)
        evaluator = Evaluator(ann, root / "ap10k_animalpose_tigdog" / "data", js, settings)
        model = PoseHighResolutionNet(js.num_joints, args.width).to(device, memory_format=torch.channels_last).eval()
        n = len(evaluator)
        for label in ("first call (decode + crop)", "cached crops"):
            sync(device)
            t0 = time.perf_counter()
            evaluator(model, device, amp=args.amp, fold=not args.no_fold)
            sync(device)
            dt = time.perf_counter() - t0
            emit({"benchmark": "eval", "device": describe(device), "width": args.width, "size": args.size,
                  "flip_test": True, "amp": args.amp, "folded": not args.no_fold, "instances": n, "call": label,
                  "images_per_s": round(n / dt, 2), "seconds": round(dt, 2)})


if __name__ == "__main__":
    main()
