"""FreeNet on AP-10K + AnimalPose (21 union joints), a random --sample-ratio of records labeled.

    python train_ap10k_animalpose.py --batch-size 8 --mu 7 --total-steps 45000 --eval-step 150
"""
import sys

from freenet.training import ScriptDefaults, run

DEFAULTS = ScriptDefaults(
    cfg="experiments/ap10k_animalpose/freenet_ratio.yaml",
    batch_size=8,
    pretrained_weights_name="ap_10k_animal_pose_mix_SL_{ratio}_hrnet.pth",
    description=__doc__,
    sample_ratio=0.1,
)

if __name__ == "__main__":
    sys.exit(run(DEFAULTS))
