"""FreeNet fine-tuning run of the "25 -> 5" AP-10K setting (same data and step, shorter schedule).

    python finetune.py --batch-size 8 --mu 7 --total-steps 6000 --eval-step 150 --down-step 6000

Every flag: --help. Paper settings: README "Training". The scripts differ only in data: their yaml
under experiments/ and their defaults in freenet.training.SCRIPTS (SPEC §3.4, §10).
"""
import sys

from freenet.training import run

if __name__ == "__main__":
    sys.exit(run("finetune"))
