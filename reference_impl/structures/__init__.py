from .boxes import BalancedSampler, Matcher, box_area, nonempty, pad_stack, pairwise_iou, resize_boxes
from .image_list import ImageList

__all__ = ["BalancedSampler", "Matcher", "box_area", "nonempty", "pad_stack", "pairwise_iou", "resize_boxes", "ImageList"]
