"""FreeNet on three synthesized non-standard datasets derived from AP-10K ("25 -> 5" setting).

    python train_synthetic_ap10k.py --batch-size 8 --mu 7 --total-steps 45000 --eval-step 150

Every flag: --help. Paper settings: README "Training". The scripts differ only in data: their yaml
under experiments/ and their defaults in freenet.training.SCRIPTS (SPEC §3.4, §10).
"""
import sys

from freenet.training import run

if __name__ == "__main__":
    sys.exit(run("train_synthetic_ap10k"))
