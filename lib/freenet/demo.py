"""FreeNet end to end on built-in synthetic data, in minutes on a laptop CPU (``demo.py``).

1. Generate a synthetic data root: three "datasets" of drawn quadrupeds with different joint
   definitions (AP-10K's 17, AnimalPose's 20, TigDog's 19) and a fully annotated union-24 val set.
2. Train the base network on the labeled records (``train_supervised.py``'s code path).
3. Run FreeNet with the union-24 script's code path (``train_ap10k_animalpose_tigdog.py``), the
   base network as teacher.
4. Run the same script with ``--mu 0``: the same student schedule on the labeled records only —
   the ablation that tells what the unlabeled data and the feedback bought.
5. Evaluate every model on the union-24 val set (OKS mAP, PCK per joint and body part), draw
   predictions, and write a report folder (metrics.json, report.md/.html, curves, pictures).

Only the public scripts' code paths train anything; the demo passes them flags.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from freenet import supervised, training
from freenet.checkpoint import load_model_weights
from freenet.cli import NON_NEGATIVE, Parser, run_main
from freenet.config import ConfigError, load_config
from freenet.data.dataset import read_image
from freenet.data.synthetic import generate
from freenet.data.coco import load_coco_json
from freenet.device import resolve_device
from freenet.evaluation import Evaluator, pck_parts
from freenet.inference import draw_pose, predict
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet
from freenet.plots import line_chart, save_rgb

log = logging.getLogger("freenet")

UNION_CFG = "experiments/ap10k_animalpose_tigdog/freenet_ratio.yaml"


PAPER_STUDENT_LR = 1e-3


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and schedules of one demo run."""

    data: str | dict            # synthetic size preset or per-split counts
    image_size: int             # synthetic image side
    input_size: int             # network input crop (heatmaps are a quarter of it)
    width: int                  # HRNet width
    sample_ratio: float         # labeled fraction of the pooled training records
    base_epochs: int            # supervised base network
    base_batch: int
    steps: int                  # FreeNet steps (and the --mu 0 ablation's)
    batch: int                  # labeled batch B
    mu: int                     # unlabeled batch = B * mu
    eval_step: int
    warmup: int
    down_step: int
    feedback_start: int
    feedback_complete: int
    student_lr: float = PAPER_STUDENT_LR   # lower when the student starts from the base network
    workers: int = 2
    pictures: int = 6


PLANS = {
    # ~9 minutes on 2 CPU cores; mu is the paper's (at mu=3 the student ended only +0.004 AP over the
    # base network, within noise; mu=7 gave +0.026 for 100 s more)
    "default": DemoPlan(data="default", image_size=128, input_size=64, width=8, sample_ratio=0.1,
                        base_epochs=125, base_batch=16, steps=200, batch=8, mu=7, eval_step=50, warmup=20,
                        down_step=160, feedback_start=80, feedback_complete=160, student_lr=3e-4),
    # 30-60 s on 2 CPU cores: every stage runs, the numbers are only a smoke test
    "quick": DemoPlan(data={"ap10k_train": 40, "ap10k_val": 8, "ap10k_test": 8, "animalpose_train": 40,
                            "animalpose_val": 8, "tigdog_train": 40, "tigdog_val": 8, "union24_val": 24},
                      image_size=96, input_size=64, width=8, sample_ratio=0.2, base_epochs=12, base_batch=8,
                      steps=12, batch=4, mu=2, eval_step=6, warmup=2, down_step=10, feedback_start=6,
                      feedback_complete=12, workers=2, pictures=3),
}


def tiny_model_opts(plan: DemoPlan) -> list[str]:
    heat = plan.input_size // 4
    return ["MODEL.WIDTH", str(plan.width), "MODEL.IMAGE_SIZE", f"[{plan.input_size},{plan.input_size}]",
            "MODEL.HEATMAP_SIZE", f"[{heat},{heat}]", "FREENET.EVAL_SCHEDULE", "[]"]


def freenet_args(plan: DemoPlan, root: Path, out: Path, weights: Path, device: str, mu: int) -> list[str]:
    return ["--data-root", str(root), "--output-dir", str(out), "--device", device,
            "--pretrained-model-path", str(weights), "--student-weights", base_weights_name(plan),
            "--sample-ratio", str(plan.sample_ratio), "--total-steps", str(plan.steps),
            "--eval-step", str(plan.eval_step), "--warmup-steps", str(plan.warmup), "--down-step", str(plan.down_step),
            "--feedback-steps-start", str(plan.feedback_start),
            "--feedback-steps-complete", str(plan.feedback_complete), "--student_lr", str(plan.student_lr),
            "--batch-size", str(plan.batch),
            "--mu", str(mu), "--workers", str(plan.workers), *tiny_model_opts(plan)]


def base_weights_name(plan: DemoPlan) -> str:
    """The name the union-24 script looks for by default (``union_sl_{ratio}.pth``)."""
    return training.SCRIPTS["train_ap10k_animalpose_tigdog"].pretrained_weights_name.format(ratio=plan.sample_ratio)


OUTPUT_FOLDERS = ("data", "runs", "pretrained_weights", "report")
MARKER = ".freenet-demo"        # in a folder the demo made: its output folders may be replaced


def prepare_output(out: Path) -> None:
    """``out`` empty for a new demo run: a new or empty folder, or a previous demo's, whose output
    folders are removed. A folder that holds anything else is refused: ``--out .`` in a project
    would otherwise remove the user's own ``data/`` and ``pretrained_weights/``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: --out is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        found = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ConfigError(f"{out}: --out holds files that are not a demo's ({found}); the demo writes "
                          f"{'/, '.join(OUTPUT_FOLDERS)}/ there: give a new or empty folder")
    for d in OUTPUT_FOLDERS:
        shutil.rmtree(out / d, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by demo.py: its data, runs, pretrained_weights and report folders are "
                              "replaced when the demo runs again with this --out\n")


def run_demo(plan: DemoPlan, out: Path, device: str = "auto", seed: int = 0) -> dict:
    out = Path(out)
    report_dir = out / "report"
    prepare_output(out)
    report_dir.mkdir()
    timings = {}
    t_start = time.perf_counter()

    def stage(name):
        timings[name] = round(time.perf_counter() - stage.t0, 1)
        stage.t0 = time.perf_counter()
        log.info("demo: %s done in %.1f s", name, timings[name])
    stage.t0 = t_start

    root, weights = out / "data", out / "pretrained_weights"
    generate(root, seed=seed, sizes=plan.data, image_size=plan.image_size)
    stage("synthetic data")

    # 2. Base network on the labeled records. Evaluated once, at the end, so best.pth is the last
    #    epoch's weights (no model selection on the val set anywhere in the demo).
    base_args = supervised.build_parser().parse_args([
        "--cfg", UNION_CFG, "--data-root", str(root), "--output-dir", str(out / "runs" / "base"),
        "--device", device, "--sample-ratio", str(plan.sample_ratio), "--epochs", str(plan.base_epochs),
        "--batch-size", str(plan.base_batch), "--eval-every", str(plan.base_epochs), "--workers", str(plan.workers),
        "--save-as", str(weights / base_weights_name(plan)), *tiny_model_opts(plan),
        "TRAIN.LR_STEP", f"[{int(0.8 * plan.base_epochs)},{int(0.93 * plan.base_epochs)}]"])
    base = supervised.train_supervised(base_args)
    stage("base network")

    # 3. FreeNet (union-24 script), teacher and student both start from the base network.
    parser = training.build_parser(training.SCRIPTS["train_ap10k_animalpose_tigdog"])
    freenet = training.train_freenet(parser.parse_args(
        freenet_args(plan, root, out / "runs" / "freenet", weights, device, plan.mu)))
    stage("FreeNet")
    # 4. The same student schedule without unlabeled data.
    ablation = training.train_freenet(parser.parse_args(
        freenet_args(plan, root, out / "runs" / "labeled_only", weights, device, 0)))
    stage("labeled-only ablation")

    # 5. Final weights of every model on the union-24 val set.
    cfg = load_config(UNION_CFG, ["DATASET.ROOT", str(root), "WORKERS", str(plan.workers), *tiny_model_opts(plan)])
    joint_set = load_joint_set("union24")
    evaluator = Evaluator.from_config(cfg, joint_set)
    dev = resolve_device(device)
    models = {
        "base": ("Base network (supervised, labeled records)", weights / base_weights_name(plan), ""),
        "labeled_only": ("Labeled only (--mu 0), student schedule", Path(ablation["run_dir"]) / "checkpoint.pth",
                         "student_model"),
        "freenet_teacher": ("FreeNet teacher", Path(freenet["run_dir"]) / "checkpoint.pth", "teacher_model"),
        "freenet_student": ("FreeNet student", Path(freenet["run_dir"]) / "checkpoint.pth", "student_model"),
    }
    results, nets = {}, {}
    for key, (title, path, ckpt_key) in models.items():
        net = load_net(path, ckpt_key, joint_set.num_joints, plan.width, dev)
        metrics = evaluator(net, dev, output_dir=report_dir / "eval" / key)
        results[key] = {"title": title, "weights": str(path), "key": ckpt_key or "(state_dict)", **metrics}
        nets[key] = net
    stage("evaluation")

    pictures = draw_predictions(evaluator, nets, joint_set, plan, report_dir, dev)
    curves = draw_curves(Path(base["run_dir"]), Path(freenet["run_dir"]), Path(ablation["run_dir"]), report_dir)
    stage("pictures")
    timings["total"] = round(time.perf_counter() - t_start, 1)
    summary = {"plan": asdict(plan), "seed": seed, "device": str(dev), "timings_s": timings, "models": results,
               "runs": {"base": base["run_dir"], "freenet": freenet["run_dir"], "labeled_only": ablation["run_dir"]},
               "pictures": pictures, "curves": curves}
    (report_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    write_report(summary, joint_set, report_dir)
    return summary


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def load_net(path: Path, key: str, num_joints: int, width: int, device: torch.device) -> PoseHighResolutionNet:
    net = PoseHighResolutionNet(num_joints, width)
    load_model_weights(net, path, key)
    return net.to(device).eval()


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def draw_predictions(evaluator: Evaluator, nets: dict, joint_set, plan: DemoPlan, report_dir: Path,
                     device: torch.device) -> list[str]:
    """Base network vs FreeNet student on the first val images (GT boxes), side by side."""
    records = evaluator.records
    data = load_coco_json(evaluator.ann_file)
    boxes = {a["id"]: a["bbox"] for a in data["annotations"]}
    files = []
    for i in range(min(plan.pictures, len(records))):
        image = read_image(records.image_paths[i])
        box = boxes[int(records.ann_ids[i])]
        panels = []
        for key, label in (("base", "base network"), ("freenet_student", "FreeNet student")):
            kps, scores = predict(nets[key], image, box, flip=True, device=device, joint_set=joint_set,
                                  input_size=plan.input_size)
            big = cv2.resize(image, (320, 320 * image.shape[0] // image.shape[1]), interpolation=cv2.INTER_CUBIC)
            scale = big.shape[1] / image.shape[1]
            panel = draw_pose(big, kps * scale, scores, joint_set, threshold=0.2)
            cv2.rectangle(panel, (0, 0), (panel.shape[1], 22), (0, 0, 0), -1)
            cv2.putText(panel, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            panels.append(panel)
        name = f"prediction_{i}.png"
        save_rgb(report_dir / name, np.hstack(panels))
        files.append(name)
    return files


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def draw_curves(base_run: Path, freenet_run: Path, ablation_run: Path, report_dir: Path) -> list[str]:
    fn, ab, sl = _jsonl(freenet_run / "metrics.jsonl"), _jsonl(ablation_run / "metrics.jsonl"), \
        _jsonl(base_run / "metrics.jsonl")
    steps = [r["step"] + 1 for r in fn]
    ab_steps = [r["step"] + 1 for r in ab]
    charts = {
        "curve_loss.png": line_chart({"FreeNet student": (steps, [r["train"]["s_loss"] for r in fn]),
                                      "FreeNet teacher": (steps, [r["train"]["t_loss"] for r in fn]),
                                      "labeled only (student)": (ab_steps, [r["train"]["s_loss"] for r in ab])},
                                     "training loss (mean over each evaluation window)", "step", "loss"),
        "curve_ap.png": line_chart({"FreeNet student": (steps, [r["student"]["AP"] for r in fn]),
                                    "FreeNet teacher": (steps, [r["teacher"]["AP"] for r in fn]),
                                    "labeled only (student)": (ab_steps, [r["student"]["AP"] for r in ab])},
                                   "union-24 val OKS AP during FreeNet", "step", "AP"),
        "curve_pck.png": line_chart({"FreeNet student": (steps, [r["student"]["PCK"] for r in fn]),
                                     "FreeNet teacher": (steps, [r["teacher"]["PCK"] for r in fn]),
                                     "labeled only (student)": (ab_steps, [r["student"]["PCK"] for r in ab])},
                                    "union-24 val PCK@0.05 during FreeNet", "step", "PCK"),
        "curve_base.png": line_chart({"train loss": ([r["epoch"] + 1 for r in sl], [r["train_loss"] for r in sl])},
                                     "base network (supervised)", "epoch", "loss"),
    }
    for name, image in charts.items():
        save_rgb(report_dir / name, image)
    return list(charts)


def markdown_table(summary: dict, joint_set) -> str:
    parts = list(pck_parts(joint_set))
    head = "| model | AP | AP50 | AR | PCK | " + " | ".join(f"PCK {p}" for p in parts) + " |"
    rows = [head, "|" + "---|" * (5 + len(parts))]
    for m in summary["models"].values():
        part_pck = [m["PCK_parts"].get(p) for p in parts]
        cells = [m["title"], *(f"{m[k]:.3f}" for k in ("AP", "AP50", "AR", "PCK")),
                 *("-" if v is None else f"{v:.3f}" for v in part_pck)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_report(summary: dict, joint_set, report_dir: Path) -> None:
    plan, t = summary["plan"], summary["timings_s"]
    table = markdown_table(summary, joint_set)
    models = summary["models"]
    gain = models["freenet_student"]["AP"] - models["base"]["AP"]
    gain_ablation = models["freenet_student"]["AP"] - models["labeled_only"]["AP"]
    lr_note = ("the paper's student LR, though the paper starts the student from ImageNet weights"
               if plan["student_lr"] == PAPER_STUDENT_LR else
               "a fine-tuning LR for the student, which the paper starts from ImageNet weights at "
               f"{PAPER_STUDENT_LR:g}")
    text = f"""# FreeNet demo report

Synthetic quadrupeds in three datasets with different joint definitions (AP-10K 17, AnimalPose 20,
TigDog 19 joints; data seed {summary['seed']}); {plan['sample_ratio']:.0%} of the pooled training
records labeled, the rest unlabeled. All models are HRNet-W{plan['width']} at {plan['input_size']} px,
evaluated with their final weights on the fully annotated union-24 val set (flip test; no model
selection on it).

{table}

FreeNet student vs base network: {gain:+.3f} AP. FreeNet student vs the same schedule on labeled
records only (`--mu 0`): {gain_ablation:+.3f} AP.

- Base network: `train_supervised.py`, {plan['base_epochs']} epochs, batch {plan['base_batch']}.
- FreeNet: `train_ap10k_animalpose_tigdog.py`, {plan['steps']} steps, B={plan['batch']}, mu={plan['mu']},
  student LR {plan['student_lr']:g}, feedback from step {plan['feedback_start']}; teacher and student start
  from the base network ({lr_note}).
- Labeled only: the same command with `--mu 0` (no pseudo labels, no feedback).

Device: {summary['device']}. Time: {t['total']:.0f} s in all (data {t['synthetic data']:.0f} s, base
{t['base network']:.0f} s, FreeNet {t['FreeNet']:.0f} s, labeled only {t['labeled-only ablation']:.0f} s,
evaluation {t['evaluation']:.0f} s).

![AP](curve_ap.png) ![PCK](curve_pck.png)
![loss](curve_loss.png) ![base](curve_base.png)

Predictions (left: base network, right: FreeNet student; marker size = confidence):

""" + "\n".join(f"![prediction]({p})" for p in summary["pictures"]) + "\n"
    (report_dir / "report.md").write_text(text)
    html_rows = "".join(
        "<tr>" + "".join(f"<td>{c.strip()}</td>" for c in row.strip("|").split("|")) + "</tr>"
        for row in table.splitlines()[2:])
    header = "".join(f"<th>{c.strip()}</th>" for c in table.splitlines()[0].strip("|").split("|"))
    images = "".join(f'<img src="{p}">' for p in summary["curves"][:3] + summary["pictures"])
    (report_dir / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>FreeNet demo</title><h1>FreeNet demo report</h1>"
        f"<table border=1 cellpadding=4><tr>{header}</tr>{html_rows}</table>"
        f"<p>FreeNet student vs base network: {gain:+.3f} AP; vs labeled only: {gain_ablation:+.3f} AP.</p>"
        f"<div>{images}</div>\n")


def main(argv=None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of every stage (30-60 s on 2 CPU cores: small data, few steps)")
    p.add_argument("--out", default="demo_output", help="folder for data, runs and the report")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the synthetic data")
    p.add_argument("--workers", type=NON_NEGATIVE, default=None, help="data-loader processes (default: the plan's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    plan = PLANS["quick" if args.quick else "default"]
    if args.workers is not None:
        plan = replace(plan, workers=args.workers)

    def demo():
        resolve_device(args.device)          # before minutes of data: a device that cannot be used is one line
        summary = run_demo(plan, Path(args.out), args.device, args.seed)
        report = Path(args.out) / "report"
        print((report / "report.md").read_text().split("\n\n")[2])
        print(f"\nreport: {report / 'report.md'} (and report.html, metrics.json, curves, pictures); "
              f"{summary['timings_s']['total']:.0f} s")
    return run_main(demo)
