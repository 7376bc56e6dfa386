from .boxes import BalancedSampler, Matcher, box_area, nonempty, pad_stack, pairwise_iou, resize_boxes
from .image_list import ImageList
from .masks import MASK_TARGETS, flip_polygons, mask_targets, scale_polygons, usable_polygons

__all__ = [
    "BalancedSampler",
    "Matcher",
    "box_area",
    "nonempty",
    "pad_stack",
    "pairwise_iou",
    "resize_boxes",
    "ImageList",
    "MASK_TARGETS",
    "flip_polygons",
    "mask_targets",
    "scale_polygons",
    "usable_polygons",
]
