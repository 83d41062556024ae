"""Networks (SPEC §13)."""
from .hrnet import (PoseHighResolutionNet, compile_regions, count_parameters, fold_batchnorm, load_imagenet_backbone,
                    to_sync_batchnorm)

__all__ = ["PoseHighResolutionNet", "compile_regions", "count_parameters", "fold_batchnorm", "load_imagenet_backbone",
           "to_sync_batchnorm"]
