"""A plain, loop-by-loop reference of the FreeNet selection rules and step (SPEC §5–§7).

Written the way the original computed things — Python loops over joints and samples, one value
at a time, NumPy on the host — so that tests can check the vectorised on-device implementation
against it. Slow on purpose; never used outside the tests.
"""
import math

import numpy as np
import torch


def topk_rate(step, rampdown, min_rate):
    t = min(max(step, 0), rampdown)
    return min(max(0.5 * (math.cos(math.pi * t / rampdown) + 1.0), min_rate), 1.0)


def body_part_mask(conf, groups, min_ratios, step, rampdown, floor=0.2):
    b, j = conf.shape
    mask = torch.zeros(b, j)
    for joints, min_ratio in zip(groups, min_ratios):
        values = sorted((float(conf[s, k]) for k in joints for s in range(b)), reverse=True)
        n = len(values)
        threshold = max(values[min(int(n * topk_rate(step, rampdown, min_ratio)), n - 1)], floor)
        for k in joints:
            for s in range(b):
                mask[s, k] = 1.0 if float(conf[s, k]) >= threshold else 0.0
    return mask


def feedback_mask(t_conf, s_conf, good=0.2, bad=0.2):
    t = sorted(t_conf.flatten().tolist(), reverse=True)
    s = sorted(s_conf.flatten().tolist(), reverse=True)
    i_good, i_bad = int(len(t) * good), int(len(t) * (1 - bad))
    hi, lo = max(t[i_good], s[i_good]), min(t[i_bad], s[i_bad])
    return torch.tensor([[1.0 if lo <= float(v) <= hi else 0.0 for v in row] for row in t_conf])


def render_gaussians(coords, mask, size=(64, 64), sigma=2.0):
    w, h = size
    b, j, _ = coords.shape
    out = np.zeros((b, j, h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w]
    for s in range(b):
        for k in range(j):
            if mask[s, k] == 0:
                continue
            x, y = float(coords[s, k, 0]), float(coords[s, k, 1])
            ul = (int(max(x - 3 * sigma, 0)), int(max(y - 3 * sigma, 0)))
            br = (int(min(x + 3 * sigma, w - 1)), int(min(y + 3 * sigma, h - 1)))
            if ul[0] > w - 1 or ul[1] > h - 1 or br[0] < 0 or br[1] < 0:
                continue
            g = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
            out[s, k] = g / g.max()
    return torch.from_numpy(out)


def argmax(heatmaps):
    b, j, h, w = heatmaps.shape
    coords, maxvals = torch.zeros(b, j, 2), torch.zeros(b, j)
    for s in range(b):
        for k in range(j):
            flat = heatmaps[s, k].flatten()
            idx = int(flat.argmax())
            maxvals[s, k] = flat[idx]
            if flat[idx] > 0:
                coords[s, k] = torch.tensor([idx % w, idx // w], dtype=torch.float32)
    return coords, maxvals


def loss(pred, target, mask, weights):
    b, j = mask.shape
    total = pred.new_zeros(())
    for s in range(b):
        for k in range(j):
            total = total + weights[k] * mask[s, k] * ((pred[s, k] - target[s, k]) ** 2).mean()
    return total / b


def freenet_step(step, teacher, student, t_opt, s_opt, t_sched, s_sched, labeled, unlabeled, joint_set, hyper,
                 normalize):
    """SPEC §6, literally, on the CPU in fp32. Returns both losses and the kept pseudo labels (B·mu, J)."""
    weights = torch.tensor(joint_set.loss_weights)
    groups = [g.joints for g in joint_set.part_groups]
    ratios = [g.min_ratio for g in joint_set.part_groups]
    bl = labeled["ori"].shape[0]
    x_ori = normalize(torch.cat([labeled["ori"], unlabeled["ori"]]))
    x_aug = normalize(torch.cat([labeled["aug"], unlabeled["aug"]]))
    gt, gt_mask = labeled["target"], labeled["target_weight"]
    with torch.no_grad():
        student(x_ori)
    t_aug = teacher(x_aug)
    s_aug = student(x_aug)
    t_ori = teacher(x_ori)
    t_l, t_u, s_l, s_u, t_aug_u = t_ori[:bl], t_ori[bl:], s_aug[:bl], s_aug[bl:], t_aug[bl:]
    size = (t_u.shape[-1], t_u.shape[-2])
    coords, conf = argmax(t_u.detach())
    pl_mask = body_part_mask(conf, groups, ratios, step, hyper.down_step)
    pl = render_gaussians(coords, pl_mask, size)
    s_loss_l = loss(s_l, gt, gt_mask, weights)
    s_loss = s_loss_l + loss(s_u, pl, pl_mask, weights)
    s_opt.zero_grad()
    s_loss.backward()
    s_opt.step()
    s_sched.step()
    t_loss = loss(t_l, gt, gt_mask, weights)
    if step >= hyper.feedback_start:
        with torch.no_grad():
            s_new = student(x_aug[:bl])
        dot = s_loss_l.detach() - loss(s_new, gt, gt_mask, weights)
        _, s_conf = argmax(s_u.detach())
        fb = feedback_mask(conf, s_conf)
        fb_coords, _ = argmax(t_aug_u.detach())
        fb_maps = render_gaussians(fb_coords, fb, size)
        factor = min(1.0, (step + 1 - hyper.feedback_start) / (hyper.feedback_complete - hyper.feedback_start))
        t_loss = t_loss + dot * loss(t_aug_u, fb_maps, fb, weights) * factor * hyper.feedback_weight
    t_opt.zero_grad()
    t_loss.backward()
    t_opt.step()
    t_sched.step()
    return s_loss.detach(), t_loss.detach(), pl_mask
