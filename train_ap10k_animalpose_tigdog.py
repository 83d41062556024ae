"""FreeNet on AP-10K + AnimalPose + TigDog (24 union joints), a random --sample-ratio labeled.

    python train_ap10k_animalpose_tigdog.py --batch-size 8 --mu 7 --total-steps 45000 --eval-step 150

Every flag: --help. Paper settings: README "Training". The scripts differ only in data: their yaml
under experiments/ and their defaults in freenet.training.SCRIPTS (SPEC §3.4, §10).
"""
import sys

from freenet.training import run

if __name__ == "__main__":
    sys.exit(run("train_ap10k_animalpose_tigdog"))
