"""Region proposals for the paper detectors (R-CNN, Fast R-CNN), which do not propose regions
themselves.

A proposal source is called as ``source(image, target) -> Tensor[N, 4]`` (xyxy, pixels of
``image``, a float ``[3, H, W]`` tensor; ``target`` holds at least ``image_id``):

- :class:`SelectiveSearch`: OpenCV's selective search (``cv2.ximgproc.segmentation``, from
  the optional ``opencv-contrib-python-headless``), the proposals of both papers.
- :class:`FileProposals`: precomputed proposals from a JSON file,
  ``{"<image_id>": [[x1, y1, x2, y2], ...], ...}`` in original image pixels
  (:func:`save_proposals` writes one).
- :class:`JitterProposals`: a TRAINING/TEST AID for offline runs, not a proposal method:
  ground-truth boxes jittered, plus random boxes. It reads the ground truth, so a score
  measured with it says how well the detector classifies and refines good proposals, not
  how it would do with real ones. It is only used when asked for by name.

:class:`WithProposals` adds ``target["proposals"]`` to the samples of a detection dataset and
:class:`FlipWithProposals` flips image, boxes and proposals together (the papers' only
augmentation).
"""

import json
import os
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from ...ops import clip_boxes_to_image, remove_small_boxes

SELECTIVE_SEARCH_INSTALL = "pip install opencv-contrib-python-headless"


def _check_boxes(boxes: Tensor, what: str) -> Tensor:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError("%s must be a Tensor[N, 4] of (x1, y1, x2, y2), got %s" % (what, got))
    return boxes


def _image_id(target: Optional[dict]) -> int:
    if not isinstance(target, dict) or "image_id" not in target:
        raise ValueError("this proposal source needs target['image_id']")
    image_id = target["image_id"]
    return int(image_id.item() if isinstance(image_id, Tensor) else image_id)


def import_ximgproc():
    """``cv2.ximgproc.segmentation``, or an ImportError that says what to install."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "selective search needs OpenCV with the contrib modules: %s (or pass "
            "precomputed proposals, e.g. --proposals FILE.json)" % SELECTIVE_SEARCH_INSTALL
        ) from e
    ximgproc = getattr(cv2, "ximgproc", None)
    if ximgproc is None or not hasattr(ximgproc, "segmentation"):
        raise ImportError(
            "OpenCV %s is installed without the contrib modules (cv2.ximgproc), which selective "
            "search needs: uninstall opencv-python(-headless) and %s"
            % (getattr(cv2, "__version__", "?"), SELECTIVE_SEARCH_INSTALL)
        )
    return ximgproc.segmentation


class SelectiveSearch:
    """Selective search proposals (Uijlings et al.) through OpenCV contrib: ``mode`` "fast"
    (the papers' setting) or "quality"; the first ``max_proposals`` (2000 as R-CNN) boxes
    of at least ``min_size`` pixels. Results are cached per ``image_id`` (the method is
    deterministic and slow)."""

    def __init__(self, mode: str = "fast", max_proposals: int = 2000, min_size: float = 2.0):
        if mode not in ("fast", "quality"):
            raise ValueError("mode must be 'fast' or 'quality', got %r" % (mode,))
        self.segmentation = import_ximgproc()  # fails here, at construction, when missing
        self.mode, self.max_proposals, self.min_size = mode, int(max_proposals), float(min_size)
        self._cache: Dict[int, Tensor] = {}

    def __call__(self, image: Tensor, target: Optional[dict] = None) -> Tensor:
        key = _image_id(target) if isinstance(target, dict) and "image_id" in target else None
        if key is not None and key in self._cache:
            return self._cache[key].clone()
        # OpenCV wants uint8 HxWx3 BGR
        pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu()
        bgr = pixels.flip(0).permute(1, 2, 0).contiguous().numpy()
        ss = self.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(bgr)
        if self.mode == "fast":
            ss.switchToSelectiveSearchFast()
        else:
            ss.switchToSelectiveSearchQuality()
        rects = torch.as_tensor(ss.process(), dtype=torch.float32).reshape(-1, 4)  # x, y, w, h
        boxes = torch.cat((rects[:, :2], rects[:, :2] + rects[:, 2:]), dim=1)
        boxes = boxes[remove_small_boxes(boxes, self.min_size)][: self.max_proposals]
        if key is not None:
            self._cache[key] = boxes
        return boxes.clone()


class FileProposals:
    """Proposals read from a JSON file ``{"<image_id>": [[x1, y1, x2, y2], ...]}`` (original
    image pixels). An image missing from the file is an error."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError("proposals file %r does not exist" % path)
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("%s must hold a JSON object image_id -> list of boxes" % path)
        self.path = path
        self.boxes: Dict[int, Tensor] = {}
        for key, boxes in data.items():
            t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            if not torch.isfinite(t).all() or ((t[:, 2:] - t[:, :2]) < 0).any():
                raise ValueError("%s: image %s has a box with x2 < x1 or y2 < y1" % (path, key))
            self.boxes[int(key)] = t

    def __call__(self, image: Tensor, target: Optional[dict] = None) -> Tensor:
        image_id = _image_id(target)
        if image_id not in self.boxes:
            raise KeyError("image %d has no proposals in %s" % (image_id, self.path))
        return self.boxes[image_id].clone()


def save_proposals(path: str, proposals: Dict[int, Tensor]) -> None:
    """Write ``{image_id: Tensor[N, 4]}`` in the format :class:`FileProposals` reads."""
    data = {
        str(int(k)): [
            [round(float(v), 2) for v in box] for box in _check_boxes(b, "boxes").tolist()
        ]
        for k, b in proposals.items()
    }
    with open(path, "w") as f:
        json.dump(data, f)


class JitterProposals:
    """TRAINING/TEST AID (reads the ground truth; see the module docstring): for each
    ground-truth box ``num_jitter`` copies with centre shifts and log-size changes drawn
    uniformly in ``[-jitter, jitter]`` times the box size (IoUs from about 0.2 to 1), plus
    ``num_random`` boxes with random corners anywhere in the image, clipped to it. The draw
    is a function of ``seed`` and ``image_id`` (the same proposals every epoch)."""

    def __init__(
        self, num_jitter: int = 16, num_random: int = 32, jitter: float = 0.4, seed: int = 0
    ):
        if num_jitter < 0 or num_random < 0 or num_jitter + num_random == 0:
            raise ValueError("num_jitter and num_random must be >= 0 and not both 0")
        self.num_jitter, self.num_random = int(num_jitter), int(num_random)
        self.jitter, self.seed = float(jitter), int(seed)

    def __call__(self, image: Tensor, target: dict) -> Tensor:
        if not isinstance(target, dict) or "boxes" not in target:
            raise ValueError("JitterProposals needs the target's ground-truth boxes")
        h, w = int(image.shape[-2]), int(image.shape[-1])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + _image_id(target))
        gt = _check_boxes(target["boxes"], "target['boxes']").detach().float().cpu()
        size = (gt[:, 2:] - gt[:, :2]).repeat_interleave(self.num_jitter, 0)
        centre = ((gt[:, :2] + gt[:, 2:]) / 2).repeat_interleave(self.num_jitter, 0)
        shift = (torch.rand(size.shape, generator=g) * 2 - 1) * self.jitter * size
        scale = torch.exp((torch.rand(size.shape, generator=g) * 2 - 1) * self.jitter)
        centre, size = centre + shift, size * scale
        jittered = torch.cat((centre - size / 2, centre + size / 2), dim=1)
        corners = torch.rand(self.num_random, 4, generator=g) * torch.tensor([w, h, w, h])
        random = torch.cat(
            (
                torch.minimum(corners[:, :2], corners[:, 2:]),
                torch.maximum(corners[:, :2], corners[:, 2:]),
            ),
            dim=1,
        )
        boxes = clip_boxes_to_image(torch.cat((jittered, random)), (h, w))
        return boxes[remove_small_boxes(boxes, 2.0)]


def proposal_source(spec: str, seed: int = 0):
    """The source named on the command line: ``selective_search``, ``jitter`` (the
    offline aid) or the path of a JSON proposals file."""
    if spec == "selective_search":
        return SelectiveSearch()
    if spec == "jitter":
        return JitterProposals(seed=seed)
    if spec.endswith(".json") or os.path.isfile(spec):
        return FileProposals(spec)
    raise ValueError(
        "--proposals must be selective_search, jitter or a .json proposals file, got %r" % spec
    )


class WithProposals(torch.utils.data.Dataset):
    """``dataset`` (samples ``(image, target)``) with ``target["proposals"] = source(image,
    target)`` added, before any augmentation (so file and cached proposals match the image).
    """

    def __init__(self, dataset, source):
        self.dataset, self.source = dataset, source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # classes, coco, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        target = dict(target)
        target["proposals"] = _check_boxes(self.source(image, target), "proposals").float()
        return image, target


class FlipWithProposals:
    """Horizontal flip with probability ``p`` of the image and its ``boxes``, ``proposals``
    and ``masks`` (the papers' augmentation); wrap with :class:`cvops.data.SeededTransform`
    for a draw that depends only on (seed, epoch, index)."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be in [0, 1], got %r" % (p,))
        self.p = float(p)

    def __call__(self, image: Tensor, target: dict):
        if float(torch.rand(())) >= self.p:
            return image, target
        w = image.shape[-1]
        target = dict(target)
        for key in ("boxes", "proposals"):
            if key in target:
                b = target[key]
                target[key] = torch.stack((w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]), dim=1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target


def proposals_of(targets: Optional[Sequence[dict]]) -> Optional[list]:
    """``[t["proposals"], ...]`` when every target has them, else None."""
    if not targets or not all(isinstance(t, dict) and "proposals" in t for t in targets):
        return None
    return [t["proposals"] for t in targets]
