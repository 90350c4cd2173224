"""Datasets for the cvops tasks: synthetic data generated on the fly (so every command runs
offline) and the on-disk layouts of real datasets, through one code path per task."""

from .captions import SyntheticCaptions, caption_classes
from .coco import (
    SYNTHETIC_SHAPES,
    CocoDetection,
    DetectionTransform,
    category_maps,
    collate_detection,
    detection_transforms,
    load_coco,
    make_synthetic_coco,
)
from .coco_panoptic import (
    CocoPanoptic,
    PanopticFlip,
    make_synthetic_coco_panoptic,
    read_panoptic_png,
)
from .segmentation import (
    IGNORE_INDEX,
    SHAPES,
    SegmentationFiles,
    SyntheticSegmentation,
    class_colors,
    folder_dataset,
    ignore_borders,
    read_image,
    read_mask,
    voc_dataset,
    voc_palette,
    write_segmentation_dataset,
)
from .transforms import SeededTransform, SegmentationTransform, seeded

__all__ = [
    "SyntheticCaptions",
    "caption_classes",
    "SYNTHETIC_SHAPES",
    "CocoDetection",
    "DetectionTransform",
    "category_maps",
    "collate_detection",
    "detection_transforms",
    "load_coco",
    "make_synthetic_coco",
    "CocoPanoptic",
    "PanopticFlip",
    "make_synthetic_coco_panoptic",
    "read_panoptic_png",
    "IGNORE_INDEX",
    "SHAPES",
    "SeededTransform",
    "SegmentationFiles",
    "SegmentationTransform",
    "SyntheticSegmentation",
    "class_colors",
    "folder_dataset",
    "ignore_borders",
    "read_image",
    "read_mask",
    "seeded",
    "voc_dataset",
    "voc_palette",
    "write_segmentation_dataset",
]
