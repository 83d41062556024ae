"""Two processes through torchrun with the gloo backend on the CPU (SPEC §14.1)."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_MODEL
from freenet.checkpoint import load_model_weights
from freenet.config import load_config
from freenet.evaluation import Evaluator
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet

pytestmark = pytest.mark.slow


def test_torchrun_two_processes(synthetic_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "train_split_ap10k.py"), "--level", "0", "--device", "cpu", "--data-root", str(synthetic_root),
           "--output-dir", str(tmp_path), "--total-steps", "5", "--eval-step", "2", "--workers", "0",
           "--batch-size", "2", "--mu", "2", "--pretrained-weights-name", "", "--feedback-steps-start", "2",
           *TINY_MODEL]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # rank 0 alone wrote the run folder; the ranks' weights were checked identical at each evaluation
    runs = list(tmp_path.glob("ours_*"))
    assert len(runs) == 1
    ckpt = torch.load(runs[0] / "checkpoint.pth", weights_only=False)
    # the last step came after the last evaluation: its loss window, averaged over the ranks, is kept
    assert ckpt["step"] == 4 and ckpt["loss_window_steps"] == 1 and set(ckpt["loss_window"]) >= {"s_loss", "t_loss"}
    assert all(v.isfinite() and v > 0 for v in ckpt["loss_window"].values() if v.is_floating_point())
    assert len((runs[0] / "val_log.txt").read_text().splitlines()) == 2
    # the checkpoint loads into a plain model and evaluates
    model = PoseHighResolutionNet(17, width=8)
    assert load_model_weights(model, runs[0] / "checkpoint.pth", "student_model") == "student_model"
    cfg = load_config("experiments/ap10k/freenet_split.yaml", ["DATASET.ROOT", str(synthetic_root), "WORKERS", "0",
                                                                *TINY_MODEL])
    metrics = Evaluator.from_config(cfg, load_joint_set("ap10k"))(model.eval(), torch.device("cpu"))
    assert metrics["num_instances"] > 0 and 0.0 <= metrics["AP"] <= 1.0 and 0.0 <= metrics["PCK"] <= 1.0


def _average_worker(rank, world, port, out):
    import torch.distributed as dist

    from freenet import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    for i, p in enumerate(net.parameters()):
        p.grad = torch.full_like(p, float(rank + 1) * (i + 1))
    distributed.BUCKET_BYTES = 40          # several buckets even for this small net
    distributed.average_gradients(net)
    torch.save([p.grad for p in net.parameters()], f"{out}/grads_{rank}.pt")
    dist.destroy_process_group()


def test_average_gradients_is_the_mean_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_average_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads_{rank}.pt")
        for i, g in enumerate(grads):
            assert torch.all(g == 1.5 * (i + 1))     # mean of (1, 2) * (i + 1)


def _logged_means_worker(rank, world, port, out):
    import torch.distributed as dist

    from freenet import distributed
    from freenet.engine import _window_means

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    window = {"s_loss": torch.tensor(1.0 + 2 * rank), "pl_head": torch.tensor(4 * rank)}   # sums over 2 steps
    means = _window_means(window, 2)
    saved = distributed.mean_over_ranks(window["pl_head"])            # what checkpoint.pth keeps
    torch.save((means, saved), f"{out}/means_{rank}.pt")
    dist.destroy_process_group()


def test_logged_losses_and_counts_are_means_over_ranks(tmp_path):
    """Each rank trains on its own batch: the logged value is the mean over steps and ranks."""
    import torch.multiprocessing as mp

    mp.spawn(_logged_means_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        means, saved = torch.load(tmp_path / f"means_{rank}.pt")
        assert means == {"s_loss": 1.0, "pl_head": 1.0}      # ((1 + 3) / 2 / 2, (0 + 4) / 2 / 2)
        assert float(saved) == 2.0                             # sums kept for the resume: (0 + 4) / 2


def _interrupt_worker(rank, world, port, out, signum):
    import torch.distributed as dist

    from freenet import distributed
    from freenet.engine import Interrupt

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    stopped = None
    with Interrupt() as interrupt:
        for step in range(100):
            if interrupt.next(lambda: step) is None:    # (the fetch of step's batch)
                stopped = step - 1                      # the last finished step
                break
            if rank == 1 and step == 2:
                os.kill(os.getpid(), signum)     # the signal reaches rank 1 only, during step 2
    torch.save((stopped, interrupt.requested), f"{out}/stop_{rank}.pt")
    distributed.shutdown()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_on_one_rank_stops_every_rank_after_that_step(tmp_path, signame):
    """The ranks agree after every step (torchrun kills them 30 s after forwarding a signal): rank
    1's Ctrl-C or SIGTERM in step 2 stops both after step 2."""
    import signal

    import torch.multiprocessing as mp

    mp.spawn(_interrupt_worker, args=(2, _free_port(), str(tmp_path), getattr(signal, signame)), nprocs=2)
    assert torch.load(tmp_path / "stop_0.pt") == (2, False)
    assert torch.load(tmp_path / "stop_1.pt") == (2, True)


def _run_dir_worker(rank, world, port, out):
    import torch.distributed as dist

    from freenet import distributed
    from freenet.engine import RunDir

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    assert distributed.from_main({"rank": rank}) == {"rank": 0}
    run = RunDir.create(out, f"rank{rank}", "SEED: 2\n", {"seed": 2})   # names as two clocks could differ
    with open(f"{out}/path_{rank}.txt", "w") as f:
        f.write(str(run.path))
    distributed.shutdown()


def test_every_rank_names_the_run_folder_rank_0_made(tmp_path):
    """The resume command every rank prints names the folder that exists."""
    import torch.multiprocessing as mp

    mp.spawn(_run_dir_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    paths = {(tmp_path / f"path_{rank}.txt").read_text() for rank in range(2)}
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(paths) == 1 and [str(p) for p in folders] == list(paths)
    assert folders[0].name.startswith("rank0_") and (folders[0] / "args.json").is_file()
