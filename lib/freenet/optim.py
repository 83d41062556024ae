"""A network with its optimiser, LR schedule and AMP scaler, updated by one call (SPEC §6.5, §8)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from freenet import distributed
from freenet.schedules import cosine_with_warmup


@dataclass
class OptimizedModel:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    grad_clip: float = 0.0    # max gradient norm; 0 = no clipping

    def update(self, loss: torch.Tensor) -> None:
        """:meth:`descend`, then one LR-schedule step."""
        self.descend(loss)
        self.scheduler.step()

    def descend(self, loss: torch.Tensor) -> None:
        """backward -> (all-reduce) -> unscale -> clip -> step -> scaler update -> zero grads.

        Nothing here reads a value back to the host, except the GradScaler's inf check when the
        optimizer cannot take the scale itself (fused AdamW can; see make_adamw). The clip takes the
        optimiser's parameter list: ``model.parameters()`` walks the 1,061 modules of a W32 network,
        ~1 ms of host time per call.
        """
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.model)
        if self.grad_clip > 0:    # 0: no clipping, as the original's --grad-clip 0
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])     # a device tensor under CUDA graphs

    def state_dict(self, prefix: str = "") -> dict:
        """The model, optimizer, schedule and (with AMP fp16 only) scaler states, under ``{prefix}_model``
        etc., or ``model`` etc. without a prefix. A disabled scaler's state is ``{}``, which an
        enabled one refuses to load: it is left out."""
        # The same checkpoint with or without CUDA graphs, whose learning rates are device tensors.
        optimizer, scheduler = self.optimizer.state_dict(), self.scheduler.state_dict()
        for group in optimizer["param_groups"]:
            group.update(lr=float(group["lr"]), capturable=False)
        scheduler["_last_lr"] = [float(lr) for lr in scheduler["_last_lr"]]
        out = {_key(prefix, "model"): distributed.unwrap(self.model).state_dict(),
               _key(prefix, "optimizer"): optimizer,
               _key(prefix, "scheduler"): scheduler}
        if self.scaler.is_enabled():
            out[_key(prefix, "scaler")] = self.scaler.state_dict()
        return out

    def load_state_dict(self, state: dict, prefix: str = "") -> None:
        """Inverse of :meth:`state_dict`. The scaler state is loaded only into an enabled scaler and only
        when the checkpoint has one (a run saved without AMP fp16 may resume with it, and the reverse);
        an empty one, as older train_supervised.py checkpoints hold for a disabled scaler, is ignored."""
        distributed.unwrap(self.model).load_state_dict(state[_key(prefix, "model")])
        self.optimizer.load_state_dict(state[_key(prefix, "optimizer")])
        self.scheduler.load_state_dict(state[_key(prefix, "scheduler")])
        if self.scaler.is_enabled() and state.get(_key(prefix, "scaler")):
            self.scaler.load_state_dict(state[_key(prefix, "scaler")])


def _key(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def make_adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, default betas/eps, one parameter group (SPEC §8).

    Fused on CUDA and on the CPU: one kernel for all parameters (on the CPU 3-5x faster than the
    multi-tensor version, which reads each parameter's step count back as a Python number), and on
    CUDA the GradScaler hands it the inf flag on the device instead of syncing. The same update
    rule; the rounding differs slightly from the multi-tensor version.
    """
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, **adam_implementation(device))


def adam_implementation(device: torch.device) -> dict:
    """The Adam/AdamW implementation flag for ``device``: fused where PyTorch has it (see :func:`make_adamw`)."""
    return {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}


def make_optimized(model: nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                   wait_steps: int, grad_clip: float, device: torch.device, amp_fp16: bool) -> OptimizedModel:
    optimizer = make_adamw(model, lr, weight_decay, device)
    schedule = partial(cosine_with_warmup, warmup_steps=warmup_steps, total_steps=total_steps, wait_steps=wait_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_fp16)
    return OptimizedModel(model, optimizer, scheduler, scaler, grad_clip)
