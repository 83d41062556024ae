"""HRNet pose network (SPEC §13).

The module and parameter names follow the official HRNet pose code exactly, so the FreeNet
authors' released checkpoints load with ``strict=True`` and an ImageNet HRNet-W32 classification
checkpoint loads into the backbone (:func:`load_imagenet_backbone`). Layout of the net:

    stem      2x (conv3x3 s2 -> BN -> ReLU), 64 channels                  1/4 resolution
    layer1    4 Bottlenecks, 64 -> 256
    stage2    1 module,  branches (C, 2C)                                  1/4, 1/8
    stage3    4 modules, branches (C, 2C, 4C)                              ... 1/16
    stage4    3 modules, branches (C, 2C, 4C, 8C); the last fuses into branch 0 only
    final     conv1x1 (with bias) -> J heatmaps at 1/4 resolution

A ``transitionN`` before every stage adapts the previous stage's branches and opens the new,
lower-resolution one. Inputs must have sides that are multiples of 32 so that the branches
(1/4 .. 1/32) upsample back onto each other exactly.
"""
from __future__ import annotations

import copy
import os
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from freenet.checkpoint import CheckpointError, extract_state_dict, load_checkpoint

BN_MOMENTUM = 0.1
STEM_CHANNELS = 64
BACKBONE_PREFIXES = (
    "conv1", "bn1", "conv2", "bn2", "layer1",
    "transition1", "stage2", "transition2", "stage3", "transition3", "stage4",
)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose batch count its network advances (SPEC §13).

    Same parameters, buffers, outputs and running statistics. The only difference: in training
    mode ``nn.BatchNorm2d`` adds 1 to its ``num_batches_tracked`` itself, one tiny kernel per layer
    and forward pass — 292 per HRNet forward, ~1,460 of the 15,620 tensor ops of a FreeNet step, for a
    number that only matters with ``momentum=None``. :class:`PoseHighResolutionNet` adds 1 to all
    its layers' counts at once in its forward instead.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


def _bn(channels: int) -> BatchNorm2d:
    return BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (every branch of stages 2-4)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.bn1 = _bn(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block of layer1."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), _bn(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _fuse_layer(channels: Sequence[int], i: int, j: int) -> nn.Module:
    """Brings branch j onto branch i's resolution and width (SPEC §13)."""
    if j == i:
        return nn.Identity()
    if j > i:  # lower resolution: match channels, then nearest upsample
        return nn.Sequential(
            nn.Conv2d(channels[j], channels[i], 1, bias=False),
            _bn(channels[i]),
            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
        )
    # Higher resolution: i - j stride-2 convs; only the last one changes the width, and it has no
    # ReLU because the fused sum is activated once at the end.
    steps = []
    for k in range(i - j):
        if k == i - j - 1:
            steps.append(nn.Sequential(_conv3x3(channels[j], channels[i], 2), _bn(channels[i])))
        else:
            steps.append(nn.Sequential(_conv3x3(channels[j], channels[j], 2), _bn(channels[j]), nn.ReLU(inplace=True)))
    return nn.Sequential(*steps)


class HighResolutionModule(nn.Module):
    """Parallel branches of 4 BasicBlocks each, then every output branch sums all inputs.

    With ``multi_scale_output=False`` only branch 0 (the highest resolution) is produced.
    """

    def __init__(self, channels: Sequence[int], multi_scale_output: bool = True, num_blocks: int = 4):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"HighResolutionModule needs at least 2 branches, got channels={list(channels)}")
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c) for _ in range(num_blocks)]) for c in channels
        )
        num_outputs = len(channels) if multi_scale_output else 1
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_layer(channels, i, j) for j in range(len(channels))) for i in range(num_outputs)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for fuse in self.fuse_layers:
            # With >= 2 branches `y` is always a fresh sum, so the in-place ReLU never touches xs.
            y = fuse[0](xs[0])
            for j in range(1, len(xs)):
                y = y + fuse[j](xs[j])
            out.append(self.relu(y))
        return out


def _transition(pre_channels: Sequence[int], channels: Sequence[int]) -> nn.ModuleList:
    """Adapts the previous stage's branches and opens one new branch at half resolution."""
    if len(channels) != len(pre_channels) + 1:
        raise ValueError(f"a transition opens exactly one branch: {list(pre_channels)} -> {list(channels)}")
    layers = []
    for pre, cur in zip(pre_channels, channels):
        if pre == cur:
            layers.append(nn.Identity())
        else:
            layers.append(nn.Sequential(_conv3x3(pre, cur), _bn(cur), nn.ReLU(inplace=True)))
    # The new branch is a chain (of length one here) of stride-2 convs from the lowest-resolution
    # input; the extra Sequential level keeps the official key names (`transitionN.k.0.0.weight`).
    new = nn.Sequential(_conv3x3(pre_channels[-1], channels[-1], 2), _bn(channels[-1]), nn.ReLU(inplace=True))
    layers.append(nn.Sequential(new))
    return nn.ModuleList(layers)


def _stage(channels: Sequence[int], num_modules: int, multi_scale_output: bool = True) -> nn.Sequential:
    modules = [
        HighResolutionModule(channels, multi_scale_output or m < num_modules - 1) for m in range(num_modules)
    ]
    return nn.Sequential(*modules)


class PoseHighResolutionNet(nn.Module):
    """HRNet-W{width} pose network: (B, 3, H, W) -> (B, num_joints, H/4, W/4) (SPEC §13).

    The stem (64) and layer1 (256) widths are the same for every ``width``, as in the official
    W18/W32/W48 models. Weights are initialised like the official pose code (:meth:`init_weights`),
    or with ``pose_init=False`` left at PyTorch's default init, as the FreeNet authors' code builds its
    networks; seed with ``torch.manual_seed`` before construction for reproducibility.
    """

    def __init__(self, num_joints: int = 17, width: int = 32, pose_init: bool = True):
        super().__init__()
        self.num_joints = num_joints
        self.width = width
        c2, c3, c4 = ([width * 2 ** b for b in range(n)] for n in (2, 3, 4))

        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(STEM_CHANNELS)
        self.conv2 = nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        layer1_channels = STEM_CHANNELS * Bottleneck.expansion
        self.layer1 = nn.Sequential(
            Bottleneck(STEM_CHANNELS, STEM_CHANNELS),
            *[Bottleneck(layer1_channels, STEM_CHANNELS) for _ in range(3)],
        )

        self.transition1 = _transition([layer1_channels], c2)
        self.stage2 = _stage(c2, num_modules=1)
        self.transition2 = _transition(c2, c3)
        self.stage3 = _stage(c3, num_modules=4)
        self.transition3 = _transition(c3, c4)
        self.stage4 = _stage(c4, num_modules=3, multi_scale_output=False)

        self.final_layer = nn.Conv2d(width, num_joints, 1)
        if pose_init:
            self.init_weights()
        self.find_batch_norms()

    def find_batch_norms(self) -> None:
        """The layers whose batch count :meth:`forward` advances: the network's own
        :class:`BatchNorm2d` (``nn.SyncBatchNorm`` counts its own). Called again by
        :func:`to_sync_batchnorm` after layers are replaced."""
        self._counted_norms = tuple(m for m in self.modules() if isinstance(m, BatchNorm2d))

    def init_weights(self) -> None:
        """Official HRNet pose init: conv N(0, 0.001), zero conv biases, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(x.shape)}")
        if self.training:       # what every nn.BatchNorm2d would do on its own (see BatchNorm2d)
            counts = [m.num_batches_tracked for m in self._counted_norms]
            if counts:
                torch._foreach_add_(counts, 1)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)  # (B, 256, H/4, W/4)

        xs = [x]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            # The new branch grows out of the lowest-resolution one: min() picks it for the last index.
            xs = stage([t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)])
        return self.final_layer(xs[0])  # (B, J, H/4, W/4)


def to_sync_batchnorm(model: PoseHighResolutionNet) -> PoseHighResolutionNet:
    """``--sync-bn``: the network with ``nn.SyncBatchNorm`` layers (batch statistics over all ranks)."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.find_batch_norms()
    return model


_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def fold_batchnorm(model: PoseHighResolutionNet) -> PoseHighResolutionNet:
    """An inference copy of ``model`` with every BatchNorm folded into the convolution before it.

    Eval-mode BN is a per-channel affine map of that convolution's output, so
    ``W' = W * g / sqrt(var + eps)`` and ``b' = beta + (b - mean) * g / sqrt(var + eps)`` give the same
    outputs (to float rounding) with one kernel instead of two: 292 fewer per HRNet forward,
    10-25 % less time for W32 on a CPU (README: Speed). The copy is in eval mode and has no BN
    buffers, so its state_dict is not a checkpoint; ``model`` is left as it was.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):     # conv -> BN [-> ReLU/Upsample] of stems, fuses, transitions
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], _BATCH_NORMS):
                    _fold_into(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
        elif isinstance(module, (PoseHighResolutionNet, BasicBlock, Bottleneck)):   # conv{k} -> bn{k}
            for k in (1, 2, 3):
                conv, bn = getattr(module, f"conv{k}", None), getattr(module, f"bn{k}", None)
                if isinstance(conv, nn.Conv2d) and isinstance(bn, _BATCH_NORMS):
                    _fold_into(conv, bn)
                    setattr(module, f"bn{k}", nn.Identity())
    left = [name for name, m in folded.named_modules() if isinstance(m, _BATCH_NORMS)]
    if left:
        raise ValueError(f"fold_batchnorm: BatchNorm layers with no convolution before them: {left[:3]}")
    folded.find_batch_norms()
    return folded


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``conv`` becomes ``bn(conv(x))`` of eval mode (see :func:`fold_batchnorm`); float64 on the CPU
    for the arithmetic, the parameters keep their device and dtype."""
    w = conv.weight
    mean, var, gamma, beta = (t.double().cpu() for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    scale = gamma * torch.rsqrt(var + bn.eps)
    bias = conv.bias.double().cpu() if conv.bias is not None else torch.zeros_like(scale)
    # (elementwise ops keep the weight's memory format, channels_last included)
    conv.weight = nn.Parameter((w.double().cpu() * scale.view(-1, 1, 1, 1)).to(w.device, w.dtype))
    conv.bias = nn.Parameter((beta + (bias - mean) * scale).to(w.device, w.dtype))


REGION_TYPES = (Bottleneck, HighResolutionModule)


def compile_regions(model: nn.Module, **compile_kwargs) -> int:
    """``--compile-regions``: ``torch.compile`` each Bottleneck and HighResolutionModule of ``model``
    in place; returns how many.

    These regions hold 286 of the 292 conv-BN pairs (the stem, the transitions and the final layer
    stay eager). Regions of one structure share their compiled graphs, also across the two networks
    (dynamo inlines the modules and takes their parameters as graph inputs): six structures (two
    Bottlenecks, the HRNet modules of stages 2, 3 and 4, and the last one) are compiled once per kind
    of forward (no-grad, with gradients, another batch size), in about half the time of compiling the
    whole networks (README: Speed). The parameters, the state_dict keys and the checkpoints stay those
    of the plain network, and a deep copy (the folded evaluation copy of :func:`fold_batchnorm`) runs
    eagerly. All regions share one compiled frame, so dynamo's recompile limit is raised to hold
    their graphs.
    """
    regions = [m for m in model.modules() if isinstance(m, REGION_TYPES)]
    config, limit = torch._dynamo.config, recompile_limit_name()
    setattr(config, limit, max(getattr(config, limit), 64))
    for m in regions:
        m.compile(**compile_kwargs)
    return len(regions)


def recompile_limit_name() -> str:
    """Dynamo's graphs-per-frame limit: ``recompile_limit``, ``cache_size_limit`` in older PyTorch."""
    return "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def load_imagenet_backbone(
    model: PoseHighResolutionNet,
    path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
) -> dict[str, list[str]]:
    """Copies an ImageNet HRNet classification checkpoint's backbone into ``model`` (SPEC §12).

    The file is read like any checkpoint (:func:`~freenet.checkpoint.extract_state_dict`): a plain
    state_dict or one wrapped as ``{"state_dict": ...}`` (HRNet-Image-Classification's
    ``checkpoint.pth.tar``), ``module.`` prefixes removed. The tensors under the backbone modules
    (stem, layer1, transitions, stages) are copied; the classification head (``incre_modules``,
    ``downsamp_modules``, ``final_layer``, ``classifier``) and the multi-scale outputs of the last
    stage4 module, which the pose net does not have, are skipped. Returns ``{"loaded": keys copied,
    "skipped": checkpoint keys not copied, "missing": backbone keys of model that the checkpoint
    did not provide}``. Raises :class:`CheckpointError` (a ValueError) naming the file when it
    cannot be read, when a backbone tensor has another shape than the model's (weights of another
    HRNet width) or when nothing matches; the model is then left unchanged.
    """
    if isinstance(path_or_state_dict, Mapping):
        name, checkpoint = "<state_dict>", path_or_state_dict
    else:
        name = os.fspath(path_or_state_dict)
        if not os.path.isfile(name):
            raise CheckpointError(f"{name}: ImageNet HRNet weights not found (the official HRNet classification "
                                  f"release's hrnet_w32-36af842e.pth; README: training)")
        checkpoint = load_checkpoint(name)
    state, _ = extract_state_dict(checkpoint, "", name)

    target = model.state_dict()
    loaded = {k: v for k, v in state.items() if k.split(".", 1)[0] in BACKBONE_PREFIXES and k in target}
    other_shape = [k for k, v in loaded.items() if v.shape != target[k].shape]
    if other_shape:
        k, file_width, model_width = other_shape[0], _branch_width(state), _branch_width(target)
        held = (f"the file holds HRNet-W{file_width} weights, the model is W{model_width}"
                if file_width and file_width != model_width else "weights of another HRNet width?")
        raise CheckpointError(
            f"{name}: {len(other_shape)} backbone tensors have other shapes than the model (first: {k}: "
            f"{tuple(loaded[k].shape)} in the file vs {tuple(target[k].shape)} in the model): {held}; "
            f"MODEL.WIDTH must match the file's width")
    skipped = [k for k in state if k not in loaded]
    if not loaded:
        first = ", ".join(list(state)[:5])
        raise CheckpointError(
            f"{name}: no backbone tensor matches the pose model by name "
            f"({len(state)} keys, first: {first or 'none'})"
        )
    model.load_state_dict(loaded, strict=False)
    missing = [k for k in target if k.split(".", 1)[0] in BACKBONE_PREFIXES and k not in loaded]
    return {"loaded": list(loaded), "skipped": skipped, "missing": missing}


def _branch_width(state: Mapping[str, torch.Tensor]) -> int | None:
    """The HRNet width C (channels of the first branch) of a state_dict, if it has the first transition."""
    weight = state.get("transition1.0.0.weight")   # (C, 256, 3, 3)
    return None if weight is None else int(weight.shape[0])
