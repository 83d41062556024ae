"""FreeNet on three synthesized non-standard datasets derived from AP-10K ("25 -> 5" setting).

    python train_synthetic_ap10k.py --batch-size 8 --mu 7 --total-steps 45000 --eval-step 150
"""
import sys

from freenet.training import ScriptDefaults, run

DEFAULTS = ScriptDefaults(
    cfg="experiments/ap10k/freenet_25_5.yaml",
    batch_size=4,
    pretrained_weights_name="pretrained_25_5.pth",
    description=__doc__,
    has_split_file=True,
)

if __name__ == "__main__":
    sys.exit(run(DEFAULTS))
