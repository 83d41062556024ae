from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real annotation files and images)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (not present beside this checkout)")
    return SHARED_DATA


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
