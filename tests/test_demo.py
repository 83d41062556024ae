"""``demo.py --quick``: every stage runs and the report's numbers are real evaluations."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow


def test_quick_demo_report(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "demo.py"), "--quick", "--out", str(out), "--seed", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out / "report"
    summary = json.loads((report / "metrics.json").read_text())
    assert summary["seed"] == 3 and "data seed 3)" in (report / "report.md").read_text()
    assert set(summary["models"]) == {"base", "labeled_only", "freenet_teacher", "freenet_student"}
    for name in ["report.md", "report.html", *summary["curves"], *summary["pictures"]]:
        assert (report / name).stat().st_size > 0, name
    assert len(summary["pictures"]) == 3 and len(summary["curves"]) == 4

    # The student's row is what evaluating its final weights gives, recomputed here from scratch.
    from freenet.config import load_config
    from freenet.demo import PLANS, UNION_CFG, load_net, tiny_model_opts
    from freenet.evaluation import Evaluator
    from freenet.joints import load_joint_set

    plan = PLANS["quick"]
    cfg = load_config(UNION_CFG, ["DATASET.ROOT", str(out / "data"), "WORKERS", "0", *tiny_model_opts(plan)])
    row = summary["models"]["freenet_student"]
    net = load_net(row["weights"], "student_model", 24, plan.width, torch.device("cpu"))
    again = Evaluator.from_config(cfg, load_joint_set("union24"))(net, torch.device("cpu"))
    assert again["AP"] == pytest.approx(row["AP"], abs=1e-12) and again["PCK"] == pytest.approx(row["PCK"], abs=1e-12)
    assert again["num_instances"] == row["num_instances"] > 0
    # ... and the table shows those numbers
    md = (report / "report.md").read_text()
    parts = " | ".join(f"{row['PCK_parts'][p]:.3f}" for p in ("face", "front", "back", "shared", "exclusive"))
    assert "| PCK face | PCK front | PCK back | PCK shared | PCK exclusive |" in md
    assert (f"| FreeNet student | {row['AP']:.3f} | {row['AP50']:.3f} | {row['AR']:.3f} | {row['PCK']:.3f} | "
            f"{parts} |") in md
    assert again["PCK_parts"] == pytest.approx(row["PCK_parts"], abs=1e-12)
    assert "student LR 0.001" in md and "(the paper's student LR, though" in md     # the quick plan's LR is the paper's
    # the run folders are real training runs through the public scripts' code paths
    freenet_run = summary["runs"]["freenet"]
    assert json.loads((out / "runs" / "freenet" / freenet_run.split("/")[-1] / "args.json").read_text())["mu"] == 2
    assert json.loads((out / "runs" / "labeled_only" / summary["runs"]["labeled_only"].split("/")[-1]
                       / "args.json").read_text())["mu"] == 0


def test_output_folder_of_the_user_is_refused_and_a_demo_folder_is_replaced(tmp_path):
    from freenet.config import ConfigError
    from freenet.demo import MARKER, prepare_output

    project = tmp_path / "project"                 # `demo.py --out .` in a project with its own data
    (project / "data").mkdir(parents=True)
    (project / "data" / "ann.json").write_text("{}")
    (project / "pretrained_weights").mkdir()
    with pytest.raises(ConfigError, match=r"project: --out holds files that are not a demo's \(data, pretrained_w"):
        prepare_output(project)
    assert (project / "data" / "ann.json").read_text() == "{}" and (project / "pretrained_weights").is_dir()

    demo = tmp_path / "new" / "demo"               # a new folder becomes a demo's ...
    prepare_output(demo)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER]
    for d in ("data", "report"):                    # ... whose output folders a later run replaces
        (demo / d).mkdir()
        (demo / d / "old.txt").write_text("x")
    (demo / "notes.txt").write_text("mine")
    prepare_output(demo)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER, "notes.txt"]
    with pytest.raises(ConfigError, match="--out is a file"):
        prepare_output(demo / "notes.txt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_it_cannot_use_is_one_line_before_any_data(tmp_path, capsys):
    from freenet.demo import main

    assert main(["--quick", "--device", "cuda", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err == "error: device 'cuda' requested but CUDA is not available (use --device cpu)\n"
    assert not (tmp_path / "d").exists()
