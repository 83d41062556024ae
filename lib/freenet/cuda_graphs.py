"""The FreeNet step recorded once as a CUDA graph and replayed (``--cuda-graphs``).

The eager step is limited by the host: over 12,000 kernel launches (five HRNet forward passes, three
backward passes, selection, two fused AdamW updates), each issued by Python and the dispatcher,
take longer than the GPU needs to run them. A graph replays them all with one launch.

What makes the step recordable (tested on the CPU, where the same code runs without recording):
- :meth:`FreeNetStep.run` reads no value back to the host and builds no tensor from host data;
- the numbers that change with the step — keep-ratio ramp (§7.1), feedback factor (§6.6d) and both
  learning rates (§8) — live in 0-dim device tensors that are refilled before each replay;
- the batches are copied into fixed input buffers; the LR schedules step outside the graph.
The step switches to the feedback term at ``--feedback-steps-start`` (another sequence of kernels):
the graph is recorded again there. Before each recording a few steps run eagerly on a side stream
(cuDNN autotuning, optimiser state, AMP scaler), as CUDA graphs require.
"""
from __future__ import annotations

import torch

from freenet.device import DeviceError
from freenet.freenet_step import FreeNetStep

LABELED_KEYS = ("ori", "aug", "target", "target_weight")
UNLABELED_KEYS = ("ori", "aug")


class GraphedStep:
    """Same call and results as the :class:`FreeNetStep` it wraps: ``step(i, labeled, unlabeled)``.

    ``record`` False runs the same buffers and device numbers eagerly: the CPU's way of running
    (and testing) everything but the recording. Every batch must have the shapes of the first.
    The networks' optimisers and checkpoints may not be replaced once the first step has run.
    """

    def __init__(self, step: FreeNetStep, warmup_steps: int = 3, record: bool = True):
        self.step, self.device, self.record = step, step.device, record
        if record and self.device.type != "cuda":
            raise DeviceError(f"--cuda-graphs needs a CUDA device, not {self.device}")
        self.warmup_steps = warmup_steps
        self.ramp = torch.zeros((), dtype=torch.float64, device=self.device)
        self.factor = torch.zeros((), device=self.device)
        self.inputs: tuple[dict, dict | None] | None = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.phase: bool | None = None        # feedback on/off of the steps since the last recording
        self.eager_steps = 0

    def __call__(self, step: int, labeled: dict, unlabeled: dict | None) -> dict[str, torch.Tensor]:
        if self.inputs is None:                # the first step: LRs onto the device, buffers made below
            self._lr_on_device()
        self._load(labeled, unlabeled)
        ramp, factor = self.step.schedule(step)
        self.ramp.fill_(ramp)
        self.factor.fill_(factor)
        phase = self.step.feedback_on(step, unlabeled)
        if phase != self.phase:
            self.phase, self.graph, self.eager_steps = phase, None, 0
        if self.graph is not None:
            self.graph.replay()
        elif not self.record or self.eager_steps < self.warmup_steps:
            self.outputs = self._eager()
            self.eager_steps += 1
        else:
            self.graph = self._capture()
            self.graph.replay()        # recording ran nothing: this is the step
        self.step.advance_schedules()
        return {k: v.clone() for k, v in self.outputs.items()}   # the buffers are rewritten next step

    def _run(self) -> dict[str, torch.Tensor]:
        labeled, unlabeled = self.inputs
        return self.step.run(labeled, unlabeled, self.phase, self.ramp, self.factor)

    def _eager(self) -> dict[str, torch.Tensor]:
        if not self.record:
            return self._run()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loaders' pin-memory thread keeps using CUDA while the step is recorded
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.outputs = self._run()
        return graph

    def _load(self, labeled: dict, unlabeled: dict | None) -> None:
        """Copy the batches into the fixed input buffers (made from the first batches)."""
        batches = ((labeled, LABELED_KEYS), (unlabeled, UNLABELED_KEYS))
        if self.inputs is None:
            self.inputs = tuple(None if b is None else {k: torch.empty_like(b[k], device=self.device) for k in keys}
                                for b, keys in batches)
        for (batch, keys), buffers, name in zip(batches, self.inputs, ("labeled", "unlabeled")):
            if (batch is None) != (buffers is None):
                raise ValueError(f"--cuda-graphs: the {name} batch {'is missing' if batch is None else 'appeared'} "
                                 f"at this step; every step needs the same batches")
            if batch is None:
                continue
            for k in keys:
                if batch[k].shape != buffers[k].shape or batch[k].dtype != buffers[k].dtype:
                    raise ValueError(f"--cuda-graphs: {name} batch field {k!r} is {tuple(batch[k].shape)} "
                                     f"{batch[k].dtype}, the first was {tuple(buffers[k].shape)} {buffers[k].dtype}; "
                                     f"every batch needs the same shape")
                buffers[k].copy_(batch[k], non_blocking=True)

    def _lr_on_device(self) -> None:
        """Both learning rates into device tensors that the LR schedulers fill in place, so the
        recorded optimiser steps read the current value (checkpoints still store numbers). The fused
        AdamW kernel reads a float32 LR tensor on CUDA and a float64 one on the CPU."""
        dtype = torch.float32 if self.device.type == "cuda" else torch.float64
        for net in (self.step.teacher, self.step.student):
            for group in net.optimizer.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=self.device)
                group["capturable"] = self.record
