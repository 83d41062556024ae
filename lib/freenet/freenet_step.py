"""The circuit-feedback step of FreeNet (SPEC §6) — one implementation for every training script.

Teacher = base network, student = adaptation network. Per step:
  student learns from GT + body-part-aware pseudo labels of the teacher        (§6.4–6.5, §7.1)
  teacher learns from GT + feedback: (drop of the student's labeled loss after its update)
          x (teacher loss against its own sharpened predictions on mid-confidence joints)  (§6.6, §7.2)
Everything stays on the device; the step returns tensors and never reads a value back.
:meth:`FreeNetStep.run` is that device work alone (the numbers that change with the step come in
as arguments), so :mod:`freenet.cuda_graphs` can record it once and replay it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from freenet.data.transforms import normalize_images
from freenet.device import autocast_cache_keeps_gradients
from freenet.heatmaps import argmax_keypoints, peak_values
from freenet.joints import JointSet
from freenet.losses import weighted_heatmap_mse
from freenet.optim import OptimizedModel
from freenet.pseudo_labels import UnlabeledTargets, select_targets
from freenet.schedules import feedback_factor, topk_rate


@dataclass(frozen=True)
class FreeNetHyper:
    """The step's numbers (SPEC §10 flags; the selection's two, FREENET keys of the config)."""

    down_step: int = 9000             # --down-step: keep-ratio ramp length (§7.1, §8)
    feedback_start: int = 3000        # --feedback-steps-start
    feedback_complete: int = 6000     # --feedback-steps-complete
    feedback_weight: float = 2.0      # --feedback-weight
    pl_min_confidence: float = 0.2    # FREENET.PL_MIN_CONFIDENCE: floor of the part-group thresholds (§7.1)
    feedback_band: tuple[float, float] = (0.2, 0.2)  # FREENET.FEEDBACK_BAND: top / bottom fractions left out (§7.2)


class FreeNetStep:
    def __init__(self, teacher: OptimizedModel, student: OptimizedModel, joint_set: JointSet, hyper: FreeNetHyper,
                 device: torch.device, autocast_dtype: torch.dtype | None = None, channels_last: bool = False):
        self.teacher, self.student, self.hyper, self.device = teacher, student, hyper, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weights = torch.tensor(joint_set.loss_weights, device=device)              # (J,)
        self.groups = [g.joints for g in joint_set.part_groups]
        self.min_ratios = [g.min_ratio for g in joint_set.part_groups]
        # (G, J) 0/1: pseudo labels counted per logging group with one matrix product
        self.logging_names = list(joint_set.logging_groups)
        self.logging_matrix = torch.zeros(len(self.logging_names), joint_set.num_joints, device=device)
        for g, joints in enumerate(joint_set.logging_groups.values()):
            self.logging_matrix[g, list(joints)] = 1.0
        self.autocast_dtype = autocast_dtype
        self.autocast_cache = autocast_dtype is not None and autocast_cache_keeps_gradients(device.type, autocast_dtype)

    def autocast(self):
        """One region holds no-grad and gradient forwards of the same network; its weight-cast cache
        is used only where PyTorch keeps the casts' gradient history (see
        :func:`~freenet.device.autocast_cache_keeps_gradients`)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=self.autocast_cache)

    def loss(self, pred, target, mask):
        return weighted_heatmap_mse(pred, target, mask, self.weights)

    def views(self, labeled: dict, unlabeled: dict | None, view: str) -> torch.Tensor:
        """[labeled; unlabeled] images of one view (§6.1), normalised on the device."""
        # Copy each (pinned) batch to the device first: a CPU-side cat would make an unpinned tensor,
        # whose host-to-device copy blocks.
        parts = [labeled[view]] if unlabeled is None else [labeled[view], unlabeled[view]]
        x = torch.cat([p.to(self.device, non_blocking=True) for p in parts])
        return normalize_images(x).contiguous(memory_format=self.memory_format)

    def feedback_on(self, step: int, unlabeled: dict | None) -> bool:
        """§6.6: the teacher learns from the feedback term from ``--feedback-steps-start`` on."""
        return unlabeled is not None and step >= self.hyper.feedback_start

    def schedule(self, step: int) -> tuple[float, float]:
        """The step's two numbers: the keep-ratio cosine before its per-group clamp (§7.1, §8) and
        the feedback factor (§6.6d)."""
        hp = self.hyper
        return (topk_rate(step, hp.down_step, 0.0),
                feedback_factor(step, hp.feedback_start, hp.feedback_complete, hp.feedback_weight))

    def advance_schedules(self) -> None:
        """One LR-schedule step for both networks (§8), after both updates. §6 steps the student's
        scheduler before the teacher's update, which does not read the student's LR: the same
        result, with the host-side schedules outside :meth:`run`."""
        self.student.scheduler.step()
        self.teacher.scheduler.step()

    def targets(self, t_u: torch.Tensor, s_u: torch.Tensor, t_aug_u: torch.Tensor | None,
                ramp: float | torch.Tensor) -> UnlabeledTargets:
        """§6.4, §6.6: decode the unlabeled predictions (§5.3) and select and render their targets
        (§7, §5.2). ``t_aug_u`` None: before feedback starts, pseudo labels only. ``ramp``: the
        first number of :meth:`schedule`."""
        coords, conf = argmax_keypoints(t_u.detach())
        feedback = None
        if t_aug_u is not None:
            s_conf = peak_values(s_u.detach())                   # the student before its update
            fb_coords, _ = argmax_keypoints(t_aug_u.detach())
            feedback = s_conf, fb_coords
        return select_targets(coords, conf, self.groups, self.min_ratios, ramp, (t_u.shape[-1], t_u.shape[-2]),
                              feedback, self.hyper.pl_min_confidence, self.hyper.feedback_band)

    def __call__(self, step: int, labeled: dict, unlabeled: dict | None) -> dict[str, torch.Tensor]:
        """One step. ``unlabeled`` None (``--mu 0``) is the labeled-only ablation: no pseudo labels,
        no feedback; both networks learn from GT alone."""
        out = self.run(labeled, unlabeled, self.feedback_on(step, unlabeled), *self.schedule(step))
        self.advance_schedules()
        return out

    def run(self, labeled: dict, unlabeled: dict | None, feedback_on: bool, ramp: float | torch.Tensor,
            factor: float | torch.Tensor) -> dict[str, torch.Tensor]:
        """The device work of one step, both optimiser updates included, LR schedules excluded.
        ``ramp`` and ``factor``: :meth:`schedule` of the step, as numbers or as 0-dim device tensors;
        ``feedback_on``: :meth:`feedback_on` of the step (never without an unlabeled batch)."""
        if feedback_on and unlabeled is None:
            raise ValueError("the feedback term needs an unlabeled batch (see FreeNetStep.feedback_on)")
        teacher, student = self.teacher.model, self.student.model
        bl = labeled["ori"].shape[0]
        x_ori, x_aug = self.views(labeled, unlabeled, "ori"), self.views(labeled, unlabeled, "aug")  # (Bl+Bu, 3, S, S)
        gt = labeled["target"].to(self.device, non_blocking=True)                  # (Bl, J, H, W)
        gt_mask = labeled["target_weight"].to(self.device, non_blocking=True)      # (Bl, J)

        with self.autocast():
            # §6.2: its only effect is the student's BatchNorm running statistics — kept on purpose.
            with torch.no_grad():
                student(x_ori)
            # §6.3, in the original order. Before feedback starts nothing back-propagates through
            # t_aug, so it runs without a graph: same outputs and BN updates, less memory.
            with torch.set_grad_enabled(feedback_on):
                t_aug = teacher(x_aug)
            s_aug = student(x_aug)
            t_ori = teacher(x_ori)
        t_l, t_u = t_ori[:bl], t_ori[bl:]
        s_l, s_u = s_aug[:bl], s_aug[bl:]

        # §6.5: student update. Targets are detached, so no gradient reaches the teacher.
        s_loss_l = self.loss(s_l, gt, gt_mask)
        s_loss = s_loss_l
        if unlabeled is not None:
            targets = self.targets(t_u, s_u, t_aug[bl:] if feedback_on else None, ramp)
            s_loss = s_loss + self.loss(s_u, targets.maps, targets.mask)
        self.student.descend(s_loss)

        # §6.6: teacher update.
        t_loss = self.loss(t_l, gt, gt_mask)
        if feedback_on:
            with torch.no_grad(), self.autocast():
                s_new = student(x_aug[:bl])                                # updated student, train mode
            dot = s_loss_l.detach() - self.loss(s_new, gt, gt_mask)        # how much the student improved
            t_loss = t_loss + dot * self.loss(t_aug[bl:], targets.feedback_maps, targets.feedback_mask) * factor
        self.teacher.descend(t_loss)

        out = {"s_loss": s_loss.detach(), "t_loss": t_loss.detach()}
        if unlabeled is not None and self.logging_names:
            counts = self.logging_matrix @ targets.mask.sum(0)                      # (G,) pseudo labels kept
            out.update((f"pl_{name}", n) for name, n in zip(self.logging_names, counts.unbind()))
        return out
