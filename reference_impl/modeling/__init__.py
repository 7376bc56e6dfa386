from .backbone import FPN, FrozenBatchNorm2d, ResNet, ResNetFPN, calibrate_norm_statistics, norm_layers
from .mask_rcnn import (
    MaskRCNN,
    convert_torchvision_state_dict,
    load_torchvision_weights,
    to_torchvision_state_dict,
)
from .preprocess import Preprocessor
from .roi_heads import ROIHeads
from .rpn import RPN, AnchorGenerator

__all__ = [
    "FPN",
    "FrozenBatchNorm2d",
    "ResNet",
    "ResNetFPN",
    "calibrate_norm_statistics",
    "norm_layers",
    "MaskRCNN",
    "convert_torchvision_state_dict",
    "load_torchvision_weights",
    "to_torchvision_state_dict",
    "Preprocessor",
    "ROIHeads",
    "RPN",
    "AnchorGenerator",
]
