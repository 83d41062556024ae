"""Evaluate a checkpoint (or an existing COCO results file) on a validation set.

    python eval_ap10k.py --cfg experiments/ap10k/w32_256x256_ap10k.yaml --animalpose \
        OUTPUT_DIR output/eval TEST.MODEL_FILE pretrained_weights/model.pth
    python eval_ap10k.py --cfg ... --results output/eval/results.json OUTPUT_DIR output/rescored

Trailing ``KEY VALUE`` pairs override the yaml. Prints OKS AP/AR and PCK, then writes ``metrics.json``
and (for a model) the COCO results ``results.json`` under OUTPUT_DIR (tried before the evaluation).
"""
from __future__ import annotations

import logging
import sys

from freenet.cli import NON_NEGATIVE, USER_ERRORS, Parser
from freenet.config import load_config
from freenet.device import usable_cpus
from freenet.errors import USER_ERROR_EXIT
from freenet.evaluation import METRICS_FILE, RESULTS_FILE, evaluate_from_config, format_metrics_table, write_outputs


def main(argv=None) -> int:
    parser = Parser(
        description=__doc__.split("\n")[0],
        epilog="Trailing KEY VALUE pairs override the yaml: TEST.MODEL_FILE (the weights), TEST.MODEL_KEY (which "
               "weights inside a training checkpoint; default: the first of teacher_model, student_model, "
               "state_dict, model), OUTPUT_DIR, DATASET.ROOT, DATASET.VAL_ANN_FILE, DATASET.VAL_IMAGE_DIR, ...")
    parser.add_argument("--cfg", required=True, help="experiment yaml (experiments/...)")
    parser.add_argument("--animalpose", action="store_true", help="accepted for compatibility; no effect")
    parser.add_argument("--protocol", choices=("standard", "freenet"), default=None,
                        help="OKS sigmas: aligned (standard) or the paper's AP-10K list (freenet); "
                             "default TEST.PROTOCOL")
    parser.add_argument("--results", default="", help="score this COCO results JSON instead of running a model")
    parser.add_argument("--data-root", default=None, help="data root (README, Data); default: DATASET.ROOT of the yaml")
    parser.add_argument("--workers", type=NON_NEGATIVE, default=None,
                        help="processes decoding and cropping images (default: WORKERS of the yaml, at most the "
                             "CPU cores this process may use)")
    args, opts = parser.parse_known_args(argv)
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.cfg, (["DATASET.ROOT", args.data_root] if args.data_root else []) + opts)
        cfg.defrost()
        cfg.WORKERS = args.workers if args.workers is not None else min(cfg.WORKERS, usable_cpus())
        cfg.freeze()
        metrics, results, joint_set = evaluate_from_config(cfg, args.protocol, args.results)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    if "model_file" in metrics:
        print(f"weights: {metrics['model_file']}: {metrics['weights']}")
    print(format_metrics_table(metrics, joint_set))  # first: a failed write below loses no result
    try:
        write_outputs(cfg.OUTPUT_DIR, metrics, results)
    except OSError as e:  # e.g. a full disk, or a folder made read-only during the evaluation
        print(f"error: {cfg.OUTPUT_DIR}: cannot write the outputs there (OUTPUT_DIR): {e.strerror or e}; "
              "the metrics are above", file=sys.stderr)
        return USER_ERROR_EXIT
    print(f"wrote {cfg.OUTPUT_DIR}/{METRICS_FILE}" + ("" if results is None else f" and {RESULTS_FILE}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
