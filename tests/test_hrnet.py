"""PoseHighResolutionNet layout, forward, init and ImageNet backbone loading (SPEC §13, §12)."""
from __future__ import annotations

import copy
import json
import re
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freenet.checkpoint import CheckpointError
from freenet.models import (PoseHighResolutionNet, compile_regions, count_parameters, fold_batchnorm,
                            load_imagenet_backbone, to_sync_batchnorm)
from freenet.models.hrnet import BACKBONE_PREFIXES, REGION_TYPES, BasicBlock, BatchNorm2d
from freenet.profiling import dispatched_ops

SPEC_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "hrnet_w32_state_dict.json"


def _model(num_joints: int = 17, width: int = 8, seed: int = 0) -> PoseHighResolutionNet:
    torch.manual_seed(seed)
    return PoseHighResolutionNet(num_joints=num_joints, width=width)


def _calibrated(width: int = 8, seed: int = 0) -> PoseHighResolutionNet:
    """A model in eval mode whose BN running stats come from a few train-mode batches, so that eval
    outputs are not just the (near-zero) product of freshly initialised convs."""
    model = _model(width=width, seed=seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64))
    return model.eval()


def _is_backbone(key: str) -> bool:
    return key.split(".", 1)[0] in BACKBONE_PREFIXES


@pytest.fixture(scope="module")
def w32() -> PoseHighResolutionNet:
    return _model(num_joints=17, width=32)


@pytest.fixture(scope="module")
def spec() -> dict:
    if not SPEC_FILE.is_file():
        pytest.skip(f"state_dict reference {SPEC_FILE} is absent (needs ../shared next to the repo)")
    return json.loads(SPEC_FILE.read_text())


@pytest.mark.parametrize("num_joints", [17, 21, 24])
def test_state_dict_layout_matches_official(spec, num_joints):
    ref = spec["models"][str(num_joints)]
    model = _model(num_joints=num_joints, width=32)
    layout = [[key, list(t.shape)] for key, t in model.state_dict().items()]
    assert layout == ref["state_dict"]
    assert len(layout) == ref["num_state_dict_entries"] == 1754
    assert count_parameters(model) == ref["param_count"]
    assert sum(b.numel() for b in model.buffers()) == ref["buffer_count"]


def test_parameter_count_w32_17_joints(w32):
    assert count_parameters(w32) == 28_536_113


def test_init_like_official_pose_hrnet(w32):
    convs = [m for m in w32.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])  # ~28.5M samples of N(0, 1e-3)
    assert weights.std().item() == pytest.approx(1e-3, rel=0.01)
    assert abs(weights.mean().item()) < 1e-5
    assert torch.count_nonzero(w32.final_layer.bias) == 0
    bns = [m for m in w32.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 292
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) and m.momentum == 0.1 for m in bns)


@pytest.mark.parametrize(
    "width, size, batch",
    [
        (8, (64, 64), 2),
        (8, (256, 256), 2),
        (8, (64, 96), 2),  # non-square
        (16, (64, 64), 2),
        (32, (64, 64), 2),
        (32, (256, 256), 1),
    ],
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v),
)
def test_forward_shape_and_finite(width, size, batch):
    model = _model(num_joints=17, width=width)
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        y = model(x)  # train mode: BN normalises with batch statistics
    assert y.shape == (batch, 17, size[0] // 4, size[1] // 4)
    assert torch.isfinite(y).all()
    assert y.abs().max() > 0


def test_forward_rejects_sides_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        _model()(torch.randn(1, 3, 64, 80))


def test_channels_last_and_autocast_match_float32():
    model = _calibrated()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        scale = ref.abs().max()
        model_cl = model.to(memory_format=torch.channels_last)
        y_cl = model_cl(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_amp = model_cl(x)
    assert scale > 0
    assert torch.allclose(y_cl, ref, rtol=0, atol=1e-4 * scale)
    assert y_amp.dtype == torch.bfloat16
    assert torch.allclose(y_amp.float(), ref, rtol=0, atol=0.05 * scale)


def _with_torch_batch_norms(model: PoseHighResolutionNet) -> PoseHighResolutionNet:
    """A copy whose BatchNorms run ``nn.BatchNorm2d.forward`` (each counts its own batches) and
    whose network counts none: the reference for the network-wide count."""
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, BatchNorm2d):
            m.forward = types.MethodType(nn.BatchNorm2d.forward, m)
    reference._counted_norms = ()
    return reference


def test_batch_norm_counts_advance_once_per_training_forward_like_torch():
    model = _model()
    reference = _with_torch_batch_norms(model)
    for net in (model, reference):      # 3 training forwards (one with a backward), one in eval mode
        torch.manual_seed(3)
        with torch.no_grad():
            net(torch.randn(2, 3, 64, 64))
            net(torch.randn(2, 3, 64, 64))
        net(torch.randn(2, 3, 64, 64)).square().mean().backward()
        with torch.no_grad():
            net.eval()(torch.randn(2, 3, 64, 64))
    ours, theirs = model.state_dict(), reference.state_dict()
    counts = [v for k, v in ours.items() if k.endswith("num_batches_tracked")]
    assert len(counts) == 292 and all(int(c) == 3 for c in counts)     # HRNet has 292 BatchNorm layers
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)                   # running statistics too
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), reference.parameters()))


def test_a_training_forward_counts_batches_with_one_op():
    model = _model()
    ops = dispatched_ops(lambda: model(torch.randn(1, 3, 64, 64)))
    assert ops["aten._foreach_add_"] == 1 and ops["aten.add_"] == 0
    assert ops["aten.native_batch_norm"] == len(model._counted_norms)


def test_counts_survive_a_device_or_format_change_and_sync_batchnorm():
    model = _model().to(memory_format=torch.channels_last).to(torch.float64)   # buffers replaced
    model(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    assert all(int(m.num_batches_tracked) == 1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    synced = to_sync_batchnorm(model)   # outside torchrun SyncBatchNorm normalises like BatchNorm2d
    assert synced._counted_norms == () and any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    synced(torch.randn(2, 3, 64, 64, dtype=torch.float64))
    assert all(int(m.num_batches_tracked) == 2 for m in synced.modules() if isinstance(m, nn.BatchNorm2d))


def _random_statistics(model: PoseHighResolutionNet, seed: int = 0) -> PoseHighResolutionNet:
    """Every BatchNorm with its own affine map and running statistics, so that a folding that mixed
    up channels, layers or the order of scale and shift would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.01)
                m.running_var.copy_(torch.rand(c, generator=g) * 1e-4 + 1e-5)   # the size of conv outputs here
    return model.eval()


def test_fold_batchnorm_folds_one_layer_by_hand():
    model = _model().eval()
    with torch.no_grad():
        model.conv1.weight.fill_(2.0)
        model.bn1.eps = 1.0
        model.bn1.running_mean.fill_(1.0)
        model.bn1.running_var.fill_(3.0)
        model.bn1.weight.fill_(4.0)
        model.bn1.bias.fill_(0.5)
    folded = fold_batchnorm(model)
    # 4 * (2x - 1) / sqrt(3 + 1) + 0.5 = 4x - 1.5
    assert torch.equal(folded.conv1.weight, torch.full_like(model.conv1.weight, 4.0))
    assert torch.equal(folded.conv1.bias, torch.full((64,), -1.5))
    assert isinstance(folded.bn1, nn.Identity) and model.conv1.bias is None


def test_fold_batchnorm_gives_the_eval_outputs_and_leaves_the_model_alone():
    model = _random_statistics(_model(num_joints=24)).to(memory_format=torch.channels_last).train()
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, out = model.eval()(x), folded(x)
    scale = ref.abs().max()
    assert scale > 1e-3 and torch.allclose(out, ref, rtol=0, atol=1e-5 * scale)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) and not folded.training
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len([m for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert sum(m.bias is not None for m in convs) == 292 + 1       # every BN's conv, and the final layer
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    # One native_batch_norm less per layer, and the count of the training forward does not apply.
    assert dispatched_ops(lambda: folded(x))["aten.native_batch_norm"] == 0 and folded._counted_norms == ()
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_fold_batchnorm_folds_sync_batchnorm_the_same():
    model = _random_statistics(_model(), seed=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = fold_batchnorm(to_sync_batchnorm(copy.deepcopy(model)))(x)
    assert torch.allclose(out, ref, rtol=0, atol=1e-5 * ref.abs().max())


class _FunctionalHRNet:
    """An eval-mode HRNet forward in ``torch.nn.functional`` that finds every weight by its official
    state_dict key (SPEC §13) and counts blocks, modules and branches from the keys present. It
    records the keys it reads, so a test can check that the layout holds nothing it does not use.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], eps: float):
        self.state, self.eps, self.read = state_dict, eps, set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return self.state[key]

    def count(self, prefix: str) -> int:
        """1 + the largest index right after ``prefix``; identity entries have no keys (SPEC §13)."""
        return 1 + max(int(k[len(prefix):].split(".")[0]) for k in self.state if k.startswith(prefix))

    def conv_bn(self, x: torch.Tensor, conv: str, bn: str, stride: int = 1, relu: bool = True) -> torch.Tensor:
        """Bias-free conv with 'same' padding -> eval-mode BN [-> ReLU] (SPEC §13)."""
        w = self[f"{conv}.weight"]
        x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)
        x = F.batch_norm(x, self[f"{bn}.running_mean"], self[f"{bn}.running_var"], self[f"{bn}.weight"],
                         self[f"{bn}.bias"], training=False, eps=self.eps)
        return F.relu(x) if relu else x

    def bottleneck(self, x: torch.Tensor, p: str) -> torch.Tensor:
        """layer1: 1x1 -> 3x3 -> 1x1 plus the shortcut, a 1x1 conv + BN where it has keys (SPEC §13)."""
        out = self.conv_bn(x, f"{p}.conv1", f"{p}.bn1")
        out = self.conv_bn(out, f"{p}.conv2", f"{p}.bn2")
        out = self.conv_bn(out, f"{p}.conv3", f"{p}.bn3", relu=False)
        if f"{p}.downsample.0.weight" in self.state:
            x = self.conv_bn(x, f"{p}.downsample.0", f"{p}.downsample.1", relu=False)
        return F.relu(out + x)

    def basic_block(self, x: torch.Tensor, p: str) -> torch.Tensor:
        """Branch block: relu(bn2(conv2(relu(bn1(conv1(x))))) + x) (SPEC §13)."""
        out = self.conv_bn(x, f"{p}.conv1", f"{p}.bn1")
        return F.relu(self.conv_bn(out, f"{p}.conv2", f"{p}.bn2", relu=False) + x)

    def fuse(self, xs: list[torch.Tensor], p: str, i: int, j: int) -> torch.Tensor:
        """Branch j on branch i's grid (SPEC §13): j > i 1x1 conv + BN + nearest upsampling by 2^(j-i);
        j < i a chain of i-j stride-2 3x3 conv + BN, with a ReLU after all but the last."""
        if j == i:
            return xs[j]
        if j > i:
            y = self.conv_bn(xs[j], f"{p}.0", f"{p}.1", relu=False)
            return F.interpolate(y, scale_factor=2 ** (j - i), mode="nearest")
        y = xs[j]
        for k in range(i - j):
            y = self.conv_bn(y, f"{p}.{k}.0", f"{p}.{k}.1", stride=2, relu=k < i - j - 1)
        return y

    def module(self, xs: list[torch.Tensor], p: str) -> list[torch.Tensor]:
        """HighResolutionModule: BasicBlocks on every branch, then each output relu(sum of all fused
        branches); stage 4's last module has fuse keys for branch 0 only (SPEC §13)."""
        assert self.count(f"{p}.branches.") == len(xs)
        xs = list(xs)
        for b in range(len(xs)):
            for k in range(self.count(f"{p}.branches.{b}.")):
                xs[b] = self.basic_block(xs[b], f"{p}.branches.{b}.{k}")
        return [F.relu(sum(self.fuse(xs, f"{p}.fuse_layers.{i}.{j}", i, j) for j in range(len(xs))))
                for i in range(self.count(f"{p}.fuse_layers."))]

    def transition(self, xs: list[torch.Tensor], p: str) -> list[torch.Tensor]:
        """3x3 conv + BN + ReLU where a branch has keys (else identity), plus a new branch from the
        lowest-resolution one through a stride-2 3x3 conv + BN + ReLU (SPEC §13)."""
        n = self.count(f"{p}.")
        assert n == len(xs) + 1
        kept = [self.conv_bn(x, f"{p}.{i}.0", f"{p}.{i}.1") if f"{p}.{i}.0.weight" in self.state else x
                for i, x in enumerate(xs)]
        return kept + [self.conv_bn(xs[-1], f"{p}.{n - 1}.0.0", f"{p}.{n - 1}.0.1", stride=2)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, J, H/4, W/4): stem, layer1, transitions and stages 2-4, final 1x1 conv (SPEC §13)."""
        x = self.conv_bn(x, "conv1", "bn1", stride=2)
        x = self.conv_bn(x, "conv2", "bn2", stride=2)
        for b in range(self.count("layer1.")):
            x = self.bottleneck(x, f"layer1.{b}")
        xs = [x]
        for s in (2, 3, 4):
            xs = self.transition(xs, f"transition{s - 1}")
            for m in range(self.count(f"stage{s}.")):
                xs = self.module(xs, f"stage{s}.{m}")
        assert len(xs) == 1     # stage 4 keeps the highest resolution only
        return F.conv2d(xs[0], self["final_layer.weight"], self["final_layer.bias"])


def _random_weights(model: PoseHighResolutionNet, seed: int = 0) -> PoseHighResolutionNet:
    """Every conv (std 1/sqrt(fan_in), biases too) and every BN (affine map, running statistics) drawn
    at random, in eval mode: no BN is an identity and the output depends on the input (SPEC §13)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model.eval()


def test_forward_matches_a_functional_reference_read_from_the_state_dict_keys():
    model = _random_weights(_model(num_joints=17, width=8), seed=2)
    eps = {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(eps) == 1
    reference = _FunctionalHRNet(model.state_dict(), eps.pop())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, ref = model(x), reference(x)
    scale = ref.abs().max()
    assert out.shape == ref.shape == (2, 17, 16, 16)
    assert scale > 1 and torch.allclose(out, ref, rtol=0, atol=1e-5 * scale)
    unread = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} - reference.read
    assert unread == set()


def test_basic_block_with_zero_bn2_is_relu_of_its_input():
    torch.manual_seed(0)
    block = BasicBlock(4).eval()
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))     # the residual branch is 0: relu(0 + x)


def _compiled(net: nn.Module) -> set[str]:
    return {name for name, m in net.named_modules() if getattr(m, "_compiled_call_impl", None) is not None}


def test_compile_regions_compiles_the_blocks_in_place(dynamo):
    net = _model()
    keys = net.state_dict().keys()
    assert compile_regions(net) == 4 + 1 + 4 + 3      # layer1's Bottlenecks, the modules of stages 2, 3, 4
    assert _compiled(net) == {name for name, m in net.named_modules() if isinstance(m, REGION_TYPES)}
    assert "layer1.0" in _compiled(net) and "stage4.2" in _compiled(net) and "transition1.0" not in _compiled(net)
    assert net.state_dict().keys() == keys          # no `_orig_mod.` prefix: checkpoints are unchanged
    # The folded evaluation copy (a deep copy) runs eagerly.
    assert _compiled(copy.deepcopy(net)) == set() and _compiled(fold_batchnorm(net)) == set()


def test_compiled_regions_share_graphs_across_blocks_and_networks(dynamo):
    """A FreeNet step's three kinds of forward (no-grad, with gradients, the small batch) through
    both networks: each of the six region structures is traced once per kind, 18 graphs for 72
    region calls (12 regions x 3 forwards x 2 networks), beyond dynamo's default limit of 8 per frame;
    and the traced graphs compute what the eager network does, running statistics included."""
    graphs = []

    def backend(gm, example_inputs):          # records each traced graph, runs it as traced
        graphs.append(gm)
        return gm.forward

    x = torch.randn(4, 3, 64, 64)
    for seed in (0, 1):
        net, eager = _model(seed=seed), _model(seed=seed)
        compile_regions(net, backend=backend)
        outputs = []
        for model in (net, eager):
            with torch.no_grad():
                before = model(x)
            out = model(x)
            out.square().mean().backward()
            with torch.no_grad():
                small = model(x[:2])
            outputs.append((before, out.detach(), small))
        assert len(graphs) == 18                  # the second network traced nothing new
        for compiled_out, eager_out in zip(*outputs):
            torch.testing.assert_close(compiled_out, eager_out)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(net.parameters(), eager.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(net.buffers(), eager.buffers()))


def test_state_dict_round_trip_strict():
    source = _calibrated(seed=0)
    target = _model(seed=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        assert not torch.equal(target(x), expected)  # the two models really differ before loading
        target.load_state_dict(source.state_dict(), strict=True)
        assert torch.equal(target(x), expected)


def _fake_imagenet_checkpoint(model: PoseHighResolutionNet) -> tuple[dict, set]:
    """The model's backbone tensors plus classification-only keys (official cls HRNet layout)."""
    backbone = {k: v.clone() for k, v in model.state_dict().items() if _is_backbone(k)}
    extra = {
        "incre_modules.0.0.conv1.weight": torch.randn(32, 8, 1, 1),
        "downsamp_modules.0.0.weight": torch.randn(256, 128, 3, 3),
        "final_layer.0.weight": torch.randn(2048, 1024, 1, 1),
        # Same name and shape as the pose head: must still not be loaded (not a backbone module).
        "final_layer.weight": torch.full_like(model.final_layer.weight, 7.0),
        "classifier.weight": torch.randn(1000, 2048),
        "classifier.bias": torch.randn(1000),
        # The classification net's last stage4 module keeps all four outputs; the pose net has none.
        "stage4.2.fuse_layers.1.0.0.0.weight": torch.randn(16, 8, 3, 3),
    }
    return {**backbone, **extra}, set(extra)


@pytest.mark.parametrize("as_file", [False, True])
def test_load_imagenet_backbone_copies_backbone_only(tmp_path, as_file):
    source, target = _model(seed=0), _model(seed=1)
    checkpoint, extra_keys = _fake_imagenet_checkpoint(source)
    if as_file:
        path = tmp_path / "hrnet_w32-fake.pth"
        torch.save(checkpoint, path)
        checkpoint = path
    head = {k: v.clone() for k, v in target.final_layer.state_dict().items()}

    report = load_imagenet_backbone(target, checkpoint)

    backbone_keys = [k for k in target.state_dict() if _is_backbone(k)]
    assert report["loaded"] == backbone_keys
    assert set(report["skipped"]) == extra_keys
    assert report["missing"] == []
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(dst[k], src[k]) for k in backbone_keys)
    assert not torch.equal(dst["conv1.weight"], _model(seed=1).conv1.weight)  # something was copied
    for k, v in target.final_layer.state_dict().items():
        assert torch.equal(v, head[k])


def test_load_imagenet_backbone_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth: ImageNet HRNet weights not found .*hrnet_w32-36af842e"):
        load_imagenet_backbone(_model(seed=0), tmp_path / "nowhere.pth")


def test_load_imagenet_backbone_refuses_another_width(tmp_path):
    # The stem and layer1 are 64/256 channels for every width, the branches are not: a W48 file given
    # to a W32 model used to load those alone, silently.
    path, wide = tmp_path / "hrnet_w16.pth", _model(width=16, seed=0).state_dict()
    torch.save(wide, path)
    target = _model(width=8, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    other = [k for k, v in before.items() if _is_backbone(k) and v.shape != wide[k].shape]
    with pytest.raises(CheckpointError) as error:
        load_imagenet_backbone(target, path)
    message = str(error.value)
    assert message == (f"{path}: {len(other)} backbone tensors have other shapes than the model (first: "
                       f"transition1.0.0.weight: (16, 256, 3, 3) in the file vs (8, 256, 3, 3) in the model): the "
                       f"file holds HRNet-W16 weights, the model is W8; MODEL.WIDTH must match the file's width")
    assert other[0] == "transition1.0.0.weight" and len(other) > 1000
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())   # nothing half-loaded


@pytest.mark.parametrize("layout", ["module_prefix", "wrapped"])
def test_load_imagenet_backbone_reads_wrapped_and_ddp_files(tmp_path, layout):
    # HRNet-Image-Classification's checkpoint.pth.tar: {"epoch", "model": name, "state_dict", ...}
    source, target = _model(seed=0), _model(seed=1)
    checkpoint, extra_keys = _fake_imagenet_checkpoint(source)
    if layout == "module_prefix":
        checkpoint = {"module." + k: v for k, v in checkpoint.items()}
    else:
        checkpoint = {"epoch": 100, "model": "cls_hrnet", "state_dict": checkpoint, "perf": 0.75}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)
    report = load_imagenet_backbone(target, path)
    backbone_keys = [k for k in target.state_dict() if _is_backbone(k)]
    assert report["loaded"] == backbone_keys and set(report["skipped"]) == extra_keys
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(dst[k], src[k]) for k in backbone_keys)


def test_load_imagenet_backbone_unreadable_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "hrnet_w32-36af842e.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: cannot read checkpoint \(UnpicklingError"):
        load_imagenet_backbone(_model(), path)
    torch.save({"epoch": 3, "best_perf": 0.7}, path)          # no weights in it
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: .* does not hold model weights"):
        load_imagenet_backbone(_model(), path)


def test_load_imagenet_backbone_raises_when_nothing_matches(tmp_path):
    path = tmp_path / "classifier_only.pth"
    torch.save({"classifier.weight": torch.randn(10, 4), "fc.bias": torch.randn(10)}, path)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="classifier_only.pth"):
        load_imagenet_backbone(model, path)
    with pytest.raises(ValueError, match="no backbone tensor"):
        load_imagenet_backbone(model, {"final_layer.weight": model.final_layer.weight.clone()})
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
