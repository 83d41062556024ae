"""The training loop shared by every FreeNet script (SPEC §9).

Data cycling, the step, a tqdm bar, TensorBoard scalars, ``val_log.txt``, a JSON line per
evaluation, atomic ``checkpoint.pth``, ``best-oks.pth`` / ``best-pck.pth`` from the student,
resume from any step, and a clean stop on Ctrl-C or SIGTERM (the last finished step is saved; under
torchrun the ranks agree on the step).
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from freenet import distributed
from freenet.checkpoint import atomic_save, check_compatible, load_checkpoint
from freenet.config import REPO_ROOT
from freenet.errors import DataError, TrainingError, from_worker
from freenet.fileio import write_json_atomic, write_text_atomic
from freenet.optim import OptimizedModel

log = logging.getLogger("freenet")
T = TypeVar("T")


@dataclass
class LoopConfig:
    total_steps: int
    eval_step: int
    eval_schedule: Sequence[Sequence[int]] = ()  # [(until_step, every), ...] before the default cadence
    log_every: int = 10                          # refresh the progress bar (one device sync) every N steps
    stop_step: int | None = None                 # stop (and save) before this step; the schedule is unchanged

    def is_eval_step(self, step: int) -> bool:
        """(step + 1) % every == 0, with ``every`` from the first schedule entry whose step bound is not
        yet reached (the 24-joint script: 600 before 15000, 300 before 30000, SPEC §9)."""
        every = self.eval_step
        for until, n in self.eval_schedule:
            if step < until:
                every = n
                break
        return (step + 1) % every == 0

    def end(self) -> int:
        """The step this invocation stops before: ``--stop-step`` when it cuts the run short."""
        return min(self.total_steps, self.stop_step or self.total_steps)

    def first_eval_step(self, start: int) -> int | None:
        """The first step in ``start .. end() − 1`` that evaluates, or None when none does."""
        return next((s for s in range(start, self.end()) if self.is_eval_step(s)), None)


@dataclass
class TrainState:
    step: int = -1           # last finished step
    best_oks: float = -1.0   # below any score: the first evaluation always writes best-*.pth
    best_pck: float = -1.0
    best_oks_step: int = -1  # the step each best was reached at (best.json)
    best_pck_step: int = -1
    # losses summed since the last evaluation (its logged means), kept across a resume
    window: dict[str, torch.Tensor] = field(default_factory=dict)
    window_steps: int = 0
    # the logged loss means of the evaluation of ``step`` while it runs: checkpoint.pth is written
    # just before it, so a run stopped inside it (a second Ctrl-C, out of memory, a job killed)
    # evaluates that step again when resumed (:func:`restore`)
    pending_eval: dict[str, float] | None = None


class RunDir:
    """``<output_dir>/<name>_<YYYY-mm-dd_HH-MM-SS>/`` with config, arguments and git commit (SPEC §9)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str, name: str, config_text: str, args: dict) -> "RunDir":
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        path = Path(output_dir) / f"{name}_{stamp}"
        run = cls(path)
        if distributed.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            suffix = 1
            while True:  # two runs started in the same second get their own folders
                try:
                    run.path.mkdir()
                    break
                except FileExistsError:
                    suffix += 1
                    run.path = path.with_name(f"{path.name}_{suffix}")
            write_text_atomic(run.path / "git_commit.txt", git_commit() + "\n")
        run.path = Path(distributed.from_main(str(run.path)))  # the ranks' clocks may name another second
        run.write_settings(config_text, args)
        return run

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> "RunDir":
        """The run folder of a ``--resume`` checkpoint, rid of the temporary files of writes that a
        killed process (SIGKILL, power loss) never finished: a W32 checkpoint's is over 200 MB."""
        run = cls(Path(checkpoint).parent)
        if distributed.is_main():
            for stale in run.path.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        return run

    def write_settings(self, config_text: str, args: dict) -> None:
        """``config.yaml`` and ``args.json``, which a --resume reads back (atomic). A resume writes them
        again, so a flag it changed (a longer --total-steps) is what the next --resume reads."""
        if distributed.is_main():
            write_text_atomic(self.path / "config.yaml", config_text)
            write_text_atomic(self.path / "args.json", json.dumps(args, indent=2, default=str) + "\n")

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if out.returncode != 0:
            return "unknown"
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Interrupt:
    """First Ctrl-C (or SIGTERM): finish the current step, save, stop. A second one: stop at once.

    torchrun forwards both signals to every rank and kills the ranks still running 30 s later
    (``--shutdown-timeout``), so the ranks must leave the loop after the same step, and soon: the
    next step's all-reduce would wait forever for a rank that left. :meth:`next` decides before
    every step: in one process as soon as the signal came; under torchrun with one host-side
    all-reduce of the flag (:func:`~freenet.distributed.any_rank`), which does not wait for the GPU.

    A scheduler (SLURM at a time limit) sends SIGTERM to every process of the job, loader workers
    included, and they die of it. Their deaths then mean "stop" too: the DataLoader's SIGCHLD
    handler, which would raise inside the step being finished, is switched off once a signal has
    come, and a batch that can no longer be fetched stops the run after the last finished step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False     # a signal reached this process
        self.stopping = False      # every rank agreed to stop
        self._previous = {}

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if hasattr(signal, "SIGCHLD"):
            # Python runs pending handlers in signal-number order, so a worker's SIGCHLD (17) that is
            # pending beside this SIGTERM (15) finds the DataLoader's handler already gone.
            self._previous.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))
        if distributed.is_main():
            tqdm.write(f"{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
                       "(Ctrl-C again to abort).")

    def stop_now(self) -> bool:
        """Whether to stop now; the same answer on every rank."""
        if not self.stopping:
            self.stopping = distributed.any_rank(self.requested)
        return self.stopping

    def next(self, fetch: Callable[[], T]) -> T | None:
        """``fetch()`` (the next step's batch), or None when the run stops before that step: a
        signal reached some rank, perhaps killing this rank's loader workers (the error of a fetch
        after a signal means only that)."""
        try:
            batch = fetch()
        except RuntimeError as e:
            if not self.workers_stopped(e):
                raise
            batch = None
        return None if self.stop_now() else batch

    def workers_stopped(self, error: RuntimeError) -> bool:
        """Whether ``error`` is the DataLoader's word that its workers died after a signal came."""
        return self.requested and "DataLoader worker" in str(error)

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def checkpoint_state(state: TrainState, teacher: OptimizedModel, student: OptimizedModel, eval_step: int,
                     extra: dict) -> dict:
    """Everything ``--resume`` needs, with the SPEC §9 key names."""
    return {**teacher.state_dict("teacher"), **student.state_dict("student"), "step": state.step,
            "epoch": state.step // eval_step, "best_oks": state.best_oks, "best_pck": state.best_pck,
            "loss_window": {k: distributed.mean_over_ranks(v).detach().cpu() for k, v in state.window.items()},
            "loss_window_steps": state.window_steps, "pending_eval": state.pending_eval, **extra}


def restore(path: str, teacher: OptimizedModel, student: OptimizedModel) -> TrainState:
    ckpt = load_checkpoint(path)
    for key in ("teacher_model", "student_model", "teacher_optimizer", "student_optimizer", "step"):
        if key not in ckpt:
            raise DataError(path, f"not a FreeNet training checkpoint: no '{key}' (to initialise the networks "
                                  f"from weights use --pretrained-weights-name / --student-weights)")
    for name, net in (("teacher", teacher), ("student", student)):
        check_compatible(distributed.unwrap(net.model), ckpt[f"{name}_model"], f"{path} ({name}_model)")
        net.load_state_dict(ckpt, name)
    device = next(teacher.model.parameters()).device
    state = TrainState(step=ckpt["step"], best_oks=ckpt.get("best_oks", -1.0), best_pck=ckpt.get("best_pck", -1.0),
                       window={k: v.to(device) for k, v in ckpt.get("loss_window", {}).items()},
                       window_steps=ckpt.get("loss_window_steps", 0), pending_eval=ckpt.get("pending_eval"))
    # checkpoint.pth is written before each evaluation (SPEC §9), so what that evaluation found
    # lives in best.json beside it, written when the evaluation has finished.
    best = read_best(Path(path).parent)
    if best:
        state.best_oks = max(state.best_oks, best.get("best_oks", -1.0))
        state.best_pck = max(state.best_pck, best.get("best_pck", -1.0))
        state.best_oks_step = best.get("best_oks_step", best.get("step", -1))   # (before per-metric steps:
        state.best_pck_step = best.get("best_pck_step", best.get("step", -1))   # the last improvement)
        if best.get("evaluated_step") == state.step:
            state.pending_eval = None
    return state


def read_best(run: Path, required: Sequence[str] = ()) -> dict:
    """The run's ``best.json`` ({} when there is none). One that does not read as a JSON object with
    the ``required`` keys is a :class:`DataError` naming it."""
    best_file = run / "best.json"
    if not best_file.exists():
        return {}
    try:
        best = json.loads(best_file.read_text())
        if not isinstance(best, dict):
            raise TypeError(f"a JSON {type(best).__name__}, not an object")
        missing = [k for k in required if k not in best]
        if missing:
            raise KeyError(missing[0])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(best_file, f"cannot read the run's best scores ({type(e).__name__}: {e}); it is "
                                   "rewritten at every evaluation: delete it to resume with the scores of "
                                   "checkpoint.pth") from e
    return best


class Recorder:
    """TensorBoard + ``val_log.txt`` + ``metrics.jsonl``; only rank 0 writes."""

    def __init__(self, run: RunDir):
        self.run = run
        self.writer = None
        if distributed.is_main():
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

            self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))

    def scalars(self, tag: str, values: dict, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalars(tag, values, step)

    def evaluation(self, epoch: int, step: int, student: dict, teacher: dict, train: dict) -> None:
        """One line in ``metrics.jsonl``, then one in ``val_log.txt`` (see :meth:`forget_from`)."""
        if not distributed.is_main():
            return
        self.append_metrics({"epoch": epoch, "step": step, "train": train,
                             "student": _scalars_only(student), "teacher": _scalars_only(teacher)})
        with open(self.run / "val_log.txt", "a") as f:
            f.write(f"epoch:{epoch} student_oks:{student['AP']:.6f}  student_pck:{student['PCK']:.6f}  "
                    f"teacher_oks:{teacher['AP']:.6f}  teacher_pck:{teacher['PCK']:.6f}\n")

    def append_metrics(self, line: dict) -> None:
        """One JSON line in ``metrics.jsonl`` (rank 0; a non-finite number is written as null)."""
        if distributed.is_main():
            with open(self.run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(_json_safe(line), allow_nan=False) + "\n")

    def forget_from(self, value: int, key: str = "step") -> None:
        """Drop the lines of evaluations at ``value`` of ``key`` and later: a run stopped between
        logging an evaluation and finishing it (best.json) logs it again when resumed. ``val_log.txt``
        keeps as many lines as ``metrics.jsonl`` keeps, being written second."""
        metrics_file, val_file = self.run / "metrics.jsonl", self.run / "val_log.txt"
        if not distributed.is_main() or not metrics_file.exists():
            return
        lines = metrics_file.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_before(line, key, value)]
        if len(kept) < len(lines):
            write_text_atomic(metrics_file, "".join(kept))
        if val_file.exists():
            val_lines = val_file.read_text().splitlines(keepends=True)
            if len(val_lines) > len(kept):
                write_text_atomic(val_file, "".join(val_lines[:len(kept)]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _logged_before(line: str, key: str, value: int) -> bool:
    """Whether a ``metrics.jsonl`` line is an evaluation before ``value`` of ``key`` (a line torn by a
    process killed while appending it is not)."""
    try:
        return json.loads(line)[key] < value
    except (ValueError, KeyError, TypeError):
        return False


def evaluate_in_eval_mode(evaluate: Callable[[nn.Module], dict], model: nn.Module) -> dict:
    """``evaluate(model)`` with ``model`` in eval mode (no BatchNorm statistics updated by it), then
    back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        return evaluate(model)
    finally:
        model.train(was_training)


def _scalars_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, dict, list))}


def _json_safe(value):
    """JSON has no NaN or infinity: a non-finite number is written as null."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def train_loop(step_fn: Callable[[int, dict, dict], dict], teacher: OptimizedModel, student: OptimizedModel,
               labeled: Iterator[dict], unlabeled: Iterator[dict], evaluate: Callable[[nn.Module], dict],
               loop: LoopConfig, state: TrainState, run: RunDir, checkpoint_extra: dict | None = None) -> TrainState:
    """Run steps ``state.step + 1 .. loop.end() − 1``; evaluate, checkpoint and log on the cadence.
    ``evaluate(model)`` returns the metrics (``AP``, ``PCK``)."""
    recorder = Recorder(run)
    extra = checkpoint_extra or {}
    start = state.step + 1
    first_eval = loop.first_eval_step(start)
    if first_eval is not None:
        log.info("first evaluation after step %d", first_eval + 1)
    elif start < loop.end():    # (no step left: a resume that only finishes the last evaluation, below)
        # A short run under the 24-joint yaml's schedule (600 steps at first) would otherwise end
        # without best-*.pth, val_log.txt or metrics.jsonl and without saying why.
        advice = ("add FREENET.EVAL_SCHEDULE [] to evaluate every --eval-step, or lower --eval-step"
                  if loop.eval_schedule else "lower --eval-step")
        log.warning("no evaluation in steps %d..%d (every %d steps, FREENET.EVAL_SCHEDULE %s): no best-*.pth or "
                    "metrics will be written; %s", start + 1, loop.end(), loop.eval_step,
                    [list(x) for x in loop.eval_schedule], advice)
    if state.pending_eval is not None:
        log.warning("the evaluation after step %d did not finish: evaluating that checkpoint first", state.step + 1)
        recorder.forget_from(state.step)
        _evaluate_and_save(state.step, state, teacher, student, evaluate, recorder, run, loop, extra, save=False)
    # tqdm's own rate would stand beside the postfix's time per step (SPEC §9), which averages
    # over this invocation's steps, evaluations included
    bar = tqdm(total=loop.total_steps, initial=start, dynamic_ncols=True, disable=not distributed.is_main(),
               desc="FreeNet", bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
    tic = time.perf_counter()
    try:
        with Interrupt() as interrupt:
            for step in range(start, loop.end()):
                batches = interrupt.next(lambda: (next_batch(labeled), next_batch(unlabeled)))
                if batches is None:     # a signal came during the last step (or its evaluation)
                    _save_checked(run, state, teacher, student, loop, extra)
                    tqdm.write(f"Stopped after step {state.step + 1}. {resume_hint(run)}")
                    break
                out = step_fn(step, *batches)
                window = state.window
                for k, v in out.items():
                    window[k] = window[k] + v if k in window else v.clone()
                state.window_steps += 1
                state.step = step
                bar.update(1)
                if (step + 1) % loop.log_every == 0 or step == start:
                    means = _window_means(window, state.window_steps)  # the one device sync per log_every steps
                    dt = (time.perf_counter() - tic) / max(1, step + 1 - start)
                    bar.set_postfix_str(f"S_LR {student.lr:.2e} T_LR {teacher.lr:.2e} {dt:.2f}s/it "
                                        f"S_Loss {means['s_loss']:.5f} T_Loss {means['t_loss']:.5f}")
                if loop.is_eval_step(step):
                    state.pending_eval = _window_means(window, state.window_steps)
                    _warn_if_not_finite(state.pending_eval, step + 1 - state.window_steps, step)
                    state.window, state.window_steps = {}, 0
                    try:
                        _evaluate_and_save(step, state, teacher, student, evaluate, recorder, run, loop, extra)
                    except RuntimeError as e:
                        if not interrupt.workers_stopped(e):
                            raise
                        tqdm.write(f"Stopped inside the evaluation after step {step + 1} (a resume evaluates that "
                                   f"checkpoint first). {resume_hint(run)}")
                        break
            else:
                if state.step >= start and not loop.is_eval_step(state.step):
                    # The last steps ran after the last evaluation: keep them too.
                    _save_checked(run, state, teacher, student, loop, extra)
                if loop.end() < loop.total_steps and state.step == loop.end() - 1:
                    tqdm.write(f"Stopped after step {state.step + 1} (--stop-step {loop.stop_step}). "
                               f"{resume_hint(run)}")
    finally:
        bar.close()
        recorder.close()
    return state


def resume_hint(run: RunDir) -> str:
    return (f"Resume with --resume {run / 'checkpoint.pth'} (the run's flags and config are read from "
            f"{run / 'args.json'} and config.yaml)")


def _window_means(window: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """Mean of each accumulated value over the steps and the ranks, read back with a single
    device-to-host copy."""
    values = distributed.mean_over_ranks(torch.stack([v.float() for v in window.values()]).div(steps)).tolist()
    return dict(zip(window, values))


def next_batch(loader: Iterator[T]) -> T:
    """``next(loader)``; a DataError raised in a loader worker, which comes back wrapped in the
    worker's traceback, is raised again as the one-line error it was."""
    try:
        return next(loader)
    except (DataError, RuntimeError) as e:
        clean = from_worker(e)
        if clean is None:
            raise
        raise clean from None


def _evaluate_and_save(step, state, teacher, student, evaluate, recorder, run, loop, extra, save=True):
    """Checkpoint (``save``), evaluate both networks, log the evaluation with the loss means
    ``state.pending_eval``, keep the best student; best.json, written last, says the evaluation
    finished."""
    epoch = step // loop.eval_step
    train = state.pending_eval
    distributed.check_in_sync(teacher.model, "teacher")
    distributed.check_in_sync(student.model, "student")
    if save:  # first (SPEC §9): a run stopped inside the evaluation resumes with it
        _save_checked(run, state, teacher, student, loop, extra)
    if distributed.is_main():
        # the student first (SPEC §9)
        s, t = (evaluate_in_eval_mode(evaluate, distributed.unwrap(net.model)) for net in (student, teacher))
        recorder.scalars("Train_Loss", {"Stu_Loss": train["s_loss"], "Tea_Loss": train["t_loss"]}, epoch)
        recorder.scalars("Val_OKS", {"Stu_OKS": s["AP"], "Tea_OKS": t["AP"]}, epoch)
        recorder.scalars("Val_PCK", {"Stu_PCK": s["PCK"], "Tea_PCK": t["PCK"]}, epoch)
        # kept pseudo labels per logging group: head -> Head_PL, ... (SPEC §9)
        pl = {f"{key[3:].capitalize()}_PL": value for key, value in train.items() if key.startswith("pl_")}
        if pl:
            recorder.scalars("PL_kp_num", pl, epoch)
        recorder.evaluation(epoch, step, s, t, train)
        student_weights = distributed.unwrap(student.model).state_dict()
        if s["AP"] > state.best_oks:
            state.best_oks, state.best_oks_step = s["AP"], step
            atomic_save(student_weights, run / "best-oks.pth")
        if s["PCK"] > state.best_pck:
            state.best_pck, state.best_pck_step = s["PCK"], step
            atomic_save(student_weights, run / "best-pck.pth")
        write_json_atomic(run / "best.json", {"best_oks": state.best_oks, "best_oks_step": state.best_oks_step,
                                               "best_pck": state.best_pck, "best_pck_step": state.best_pck_step,
                                               "evaluated_step": step})
        tqdm.write(f"[step {step + 1}] student AP {s['AP']:.4f} PCK {s['PCK']:.4f} | "
                   f"teacher AP {t['AP']:.4f} PCK {t['PCK']:.4f} | best AP {state.best_oks:.4f}")
    state.pending_eval = None
    distributed.barrier()


def _save_checked(run: RunDir, state: TrainState, teacher: OptimizedModel, student: OptimizedModel,
                  loop: LoopConfig, extra: dict) -> None:
    """``checkpoint.pth``, unless a network's weights or BatchNorm statistics are no longer finite:
    then the run stops, and the checkpoint on disk stays the last good state."""
    for name, net in (("teacher", teacher), ("student", student)):
        if not finite_weights(distributed.unwrap(net.model)):
            raise TrainingError(
                f"the {name}'s weights are not finite numbers after step {state.step + 1} (diverged: lower its "
                f"learning rate; the logged losses show when). {run / 'checkpoint.pth'} holds the last good state, "
                f"to resume from with other flags")
    checkpoint = checkpoint_state(state, teacher, student, loop.eval_step, extra)   # every rank: a collective
    if distributed.is_main():
        atomic_save(checkpoint, run / "checkpoint.pth")


def finite_weights(model: nn.Module) -> bool:
    """Whether every weight and BatchNorm statistic is a finite number: one reduction over the
    floating-point tensors of the state_dict, one host sync (at a save, not every step)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all())


def _warn_if_not_finite(means: dict[str, float], first: int, last: int) -> None:
    """A non-finite loss whose weights stay finite: AMP's scaler skipped those steps' updates (an
    overflow it recovers from), or the targets themselves are broken (every step skipped)."""
    bad = [k for k in ("s_loss", "t_loss") if not math.isfinite(means.get(k, 0.0))]
    if bad:
        log.warning("%s not finite in steps %d..%d (with AMP those steps' updates were skipped)",
                    " and ".join(bad), first + 1, last + 1)
