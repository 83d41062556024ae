"""Train the base network (FreeNet's teacher initialisation) on the labeled records of a setting.

    python train_supervised.py --cfg experiments/ap10k/freenet_split.yaml --level 0 \
        --save-as pretrained_weights/ap_10k_split_level_0.pth
"""
import sys

from freenet.supervised import main

if __name__ == "__main__":
    sys.exit(main())
