"""FreeNet fine-tuning run of the "25 -> 5" AP-10K setting (same data and step, shorter schedule).

    python finetune.py --batch-size 8 --mu 7 --total-steps 6000 --eval-step 150 --down-step 6000
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
