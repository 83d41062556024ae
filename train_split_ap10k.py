"""FreeNet on AP-10K with synthetic missing-joint splits (--level 0: 5 shared joints, 1: 9).

    python train_split_ap10k.py --level 0 --batch-size 32 --mu 1 --total-steps 45000 --eval-step 150
"""
import sys

from freenet.training import ScriptDefaults, run

DEFAULTS = ScriptDefaults(
    cfg="experiments/ap10k/freenet_split.yaml",
    batch_size=4,
    pretrained_weights_name="ap_10k_split_level_{level}.pth",
    description=__doc__,
    needs_level=True,
)

if __name__ == "__main__":
    sys.exit(run(DEFAULTS))
