import contextlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def steady_state_exp():
    """One parallel ``torch.exp`` before any test.

    The MKL/OpenMP CPU build of PyTorch used here sometimes returns values up to 3e-4 (relative)
    off on the first parallel ``torch.exp`` call of a process, on one thread's share of the tensor;
    the same call again is accurate to float32 rounding. Seen as a rare failure (about 1 run in
    10) of the reference comparison of the Gaussian renderer when it ran right after
    tests/test_hrnet.py. With this call every test sees the steady state, so the comparisons test
    this project's code.
    """
    torch.exp(torch.zeros(1 << 16))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real annotation files and images)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (not present beside this checkout)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Bit-for-bit comparisons: one intra-op thread, so no reduction order depends on scheduling."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def dynamo():
    """Empty dynamo caches and its default recompile limit (8) for one test (compile_regions raises
    it), both restored afterwards."""
    from freenet.models.hrnet import recompile_limit_name

    torch._dynamo.reset()
    with torch._dynamo.config.patch(**{recompile_limit_name(): 8}):
        yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic data root (SPEC §3.1 layout, three joint definitions, split files)."""
    from freenet.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, sizes="tiny", image_size=96)
    return root


# Trailing yacs overrides that make a run tiny: width-8 HRNet, 64-px inputs, dense evaluation.
TINY_MODEL = ["MODEL.WIDTH", "8", "MODEL.IMAGE_SIZE", "[64,64]", "MODEL.HEATMAP_SIZE", "[16,16]",
              "FREENET.EVAL_SCHEDULE", "[]", "TEST.BATCH_SIZE_PER_GPU", "16"]


def random_batch(n: int, seed: int, num_joints: int, with_target: bool = True, size: int = 64) -> dict:
    """A collated training batch of random uint8 views (and GT heatmaps of random joints)."""
    from freenet.heatmaps import encode_keypoints

    g = np.random.default_rng(seed)
    out = {view: torch.from_numpy(g.integers(0, 256, (n, 3, size, size), dtype=np.uint8)) for view in ("ori", "aug")}
    if with_target:
        maps, valid = zip(*(encode_keypoints(g.uniform(4, size - 4, (num_joints, 2)), g.integers(0, 2, num_joints),
                                             (size // 4, size // 4)) for _ in range(n)))
        out["target"], out["target_weight"] = torch.from_numpy(np.stack(maps)), torch.from_numpy(np.stack(valid))
    return out


@contextlib.contextmanager
def tool_error(capsys, pattern: str):
    """The block ends a tool as a user error does: exit code 2 and a message matching ``pattern`` on stderr."""
    with pytest.raises(SystemExit) as e:
        yield
    assert e.value.code == 2
    assert re.search(pattern, capsys.readouterr().err)
