"""FreeNet on AP-10K with synthetic missing-joint splits (--level 0: 5 shared joints, 1: 9).

    python train_split_ap10k.py --level 0 --batch-size 32 --mu 1 --total-steps 45000 --eval-step 150

Every flag: --help. Paper settings: README "Training". The scripts differ only in data: their yaml
under experiments/ and their defaults in freenet.training.SCRIPTS (SPEC §3.4, §10).
"""
import sys

from freenet.training import run

if __name__ == "__main__":
    sys.exit(run("train_split_ap10k"))
