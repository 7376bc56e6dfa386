"""The reference implementation's ops: native C++/CUDA kernels registered as ``torch.ops.mrcnn_bench``.

When the extension ``mrcnn_bench.reference_impl._C`` is built, every function here calls the native
op, which has an autograd formula and a fake (meta) kernel so ``torch.compile`` traces through it.
When it is not built (or ``MRCNN_BENCH_OPS=fallback``), the same functions run pure-PyTorch versions
(:mod:`.fallback`). :func:`backend` says which one is in use.

Box format everywhere: (x1, y1, x2, y2) in pixels; RoIs are (batch index, x1, y1, x2, y2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from . import fallback

_NATIVE_ERROR: str | None = None
if os.environ.get("MRCNN_BENCH_OPS", "native") == "fallback":
    _NATIVE_ERROR = "MRCNN_BENCH_OPS=fallback"
else:
    try:
        from mrcnn_bench.reference_impl import _C  # noqa: F401  (loading it registers the ops)
    except ImportError as e:
        _NATIVE_ERROR = f"extension not built ({e})"

NATIVE = _NATIVE_ERROR is None
# An extension built without nvcc has CPU kernels only: CUDA tensors then take the pure-PyTorch
# ops (which run on any device) instead of failing in the dispatcher.
CUDA_KERNELS = NATIVE and bool(torch.ops.mrcnn_bench.built_with_cuda())
NO_CUDA_KERNELS = (
    "the extension was built without CUDA kernels (no nvcc, or a CPU build of torch): CUDA tensors "
    "run the pure-PyTorch fallback ops; rebuild with CUDA_HOME set (make setup, or FORCE_CUDA=1)"
)


def backend() -> str:
    """'native (cpu+cuda)', 'native (cpu only: ...)' or 'fallback: <why>'."""
    if not NATIVE:
        return f"fallback: {_NATIVE_ERROR}"
    return "native (cpu+cuda)" if CUDA_KERNELS else f"native (cpu only: {NO_CUDA_KERNELS})"


def native_on(device: torch.device | str) -> bool:
    """Whether the native kernels serve tensors on ``device`` (else the fallback does)."""
    kind = torch.device(device).type
    return NATIVE and (kind == "cpu" or (kind == "cuda" and CUDA_KERNELS))


# ------------------------------------------------------------------- autograd and fake kernels
if NATIVE:
    _lib = torch.ops.mrcnn_bench

    def _cpu_channels_last(t: torch.Tensor) -> bool:
        """Whether the CPU kernels read ``t`` where it lies in NHWC (and give channels-last results)."""
        return (
            t.device.type == "cpu"
            and t.dim() == 4
            and t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous()
        )

    def _pooled_like(features: torch.Tensor, shape) -> torch.Tensor:
        out = features.new_empty(shape)
        return out.contiguous(memory_format=torch.channels_last) if _cpu_channels_last(features) else out

    @torch.library.register_fake("mrcnn_bench::roi_align")
    def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
        return _pooled_like(input, (rois.shape[0], input.shape[1], pooled_height, pooled_width))

    @torch.library.register_fake("mrcnn_bench::roi_align_backward")
    def _roi_align_backward_fake(
        grad, rois, spatial_scale, ph, pw, batch, channels, height, width, sr, aligned
    ):
        return grad.new_empty((batch, channels, height, width))

    def _roi_align_setup(ctx, inputs, output):
        input, rois, spatial_scale, ph, pw, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned)
        ctx.input_shape = tuple(input.shape)

    def _roi_align_backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scale, ph, pw, sampling_ratio, aligned = ctx.args
        n, c, h, w = ctx.input_shape
        grad_input = _lib.roi_align_backward(
            grad.contiguous(), rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned
        )
        return grad_input, None, None, None, None, None, None

    torch.library.register_autograd(
        "mrcnn_bench::roi_align", _roi_align_backward, setup_context=_roi_align_setup
    )

    @torch.library.register_fake("mrcnn_bench::multilevel_roi_align")
    def _ml_fake(features, rois, scales, pooled_height, pooled_width, sampling_ratio, aligned, level, scale):
        return _pooled_like(features[0], (rois.shape[0], features[0].shape[1], pooled_height, pooled_width))

    @torch.library.register_fake("mrcnn_bench::multilevel_roi_align_backward")
    def _ml_backward_fake(grad, rois, features, scales, ph, pw, sr, aligned, level, scale):
        return [_pooled_like(features[0], f.shape) for f in features]

    def _ml_setup(ctx, inputs, output):
        features, rois, *args = inputs
        # The features are saved only for their shapes and dtype; they are alive for the
        # backbone's own backward anyway.
        ctx.save_for_backward(rois, *features)
        ctx.args = args

    def _ml_backward(ctx, grad):
        rois, *features = ctx.saved_tensors
        grads = _lib.multilevel_roi_align_backward(grad, rois, features, *ctx.args)  # the kernels order it
        return list(grads), None, None, None, None, None, None, None, None

    torch.library.register_autograd(
        "mrcnn_bench::multilevel_roi_align", _ml_backward, setup_context=_ml_setup
    )

    def _dynamic_index_fake(boxes, *rest):
        n = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((n,), dtype=torch.int64)

    torch.library.register_fake("mrcnn_bench::nms")(_dynamic_index_fake)
    torch.library.register_fake("mrcnn_bench::batched_nms")(_dynamic_index_fake)

    @torch.library.register_fake("mrcnn_bench::encode_boxes")
    def _encode_fake(gt, proposals, weights):
        return gt.new_empty(gt.shape)

    @torch.library.register_fake("mrcnn_bench::decode_boxes")
    def _decode_fake(deltas, boxes, weights, scale_clamp, clip_hw):
        return deltas.new_empty(deltas.shape)

    @torch.library.register_fake("mrcnn_bench::paste_masks")
    def _paste_fake(masks, boxes, height, width):
        return masks.new_empty((masks.shape[0], height, width))


# ------------------------------------------------------------------------------- public API
def _rois_for(input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """RoIs in the op-math type of the features (float32 for half/bfloat16, float64 for double)."""
    return rois.to(torch.float64 if input.dtype == torch.float64 else torch.float32)


def _coords(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Box arithmetic is done in float32 at least (bfloat16 cannot hold pixel coordinates)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.to(dtype) for t in tensors]


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """RoIAlign of ``rois`` [K, 5] on ``input`` [N, C, H, W] -> [K, C, oh, ow] (torchvision.ops.roi_align).
    ``sampling_ratio`` <= 0 samples ceil(roi_size / output_size) points per bin."""
    ph, pw = _pair(output_size)
    rois = _rois_for(input, rois)
    if native_on(input.device):
        return torch.ops.mrcnn_bench.roi_align(
            input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned)
        )
    return fallback.roi_align(
        input, rois.to(input.dtype), float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned)
    )


def multilevel_roi_align(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    scales: Sequence[float],
    output_size,
    sampling_ratio: int = 0,
    aligned: bool = True,
    canonical_level: int = 4,
    canonical_scale: int = 224,
    fused: bool = True,
) -> torch.Tensor:
    """RoIAlign over FPN levels: each RoI is pooled from the level the FPN paper assigns it (canonical
    level 4 for a 224-pixel box), as torchvision's MultiScaleRoIAlign. ``fused``: in one native call,
    without the per-level Python loop; else as torchvision computes it, a ``roi_align`` call per level
    (the same values; ``reference.fused_pooler``)."""
    ph, pw = _pair(output_size)
    features = list(features)
    scales = [float(s) for s in scales]
    if not fused:

        def one_level(feat, level_rois, scale, ph, pw, sampling_ratio, aligned):
            return roi_align(feat, level_rois, (ph, pw), scale, sampling_ratio, aligned)

        return fallback.multilevel_roi_align(
            features,
            rois,
            scales,
            ph,
            pw,
            int(sampling_ratio),
            bool(aligned),
            int(canonical_level),
            int(canonical_scale),
            roi_align=one_level,
        )
    rois = _rois_for(features[0], rois)
    if native_on(rois.device):
        return torch.ops.mrcnn_bench.multilevel_roi_align(
            features,
            rois,
            scales,
            ph,
            pw,
            int(sampling_ratio),
            bool(aligned),
            int(canonical_level),
            int(canonical_scale),
        )
    return fallback.multilevel_roi_align(
        features,
        rois.to(features[0].dtype),
        scales,
        ph,
        pw,
        int(sampling_ratio),
        bool(aligned),
        int(canonical_level),
        int(canonical_scale),
    )


def fpn_levels(
    rois: torch.Tensor, k_min: int, k_max: int, canonical_level: int = 4, canonical_scale: int = 224
):
    """The level index (0 = k_min) each RoI is pooled from."""
    return fallback.fpn_levels(rois, k_min, k_max, canonical_level, canonical_scale)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, by decreasing score (torchvision.ops.nms)."""
    boxes, scores = _coords(boxes, scores)
    if native_on(boxes.device):
        return torch.ops.mrcnn_bench.nms(boxes, scores.to(boxes.dtype), float(iou_threshold))
    return fallback.nms(boxes, scores, float(iou_threshold))


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each category of ``idxs`` (torchvision.ops.batched_nms)."""
    boxes, scores = _coords(boxes, scores)
    if native_on(boxes.device):
        return torch.ops.mrcnn_bench.batched_nms(boxes, scores.to(boxes.dtype), idxs, float(iou_threshold))
    return fallback.batched_nms(boxes, scores, idxs, float(iou_threshold))


def encode_boxes(gt: torch.Tensor, proposals: torch.Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Regression targets (dx, dy, dw, dh) of ``gt`` relative to ``proposals``, both [N, 4]."""
    weights = [float(w) for w in weights]
    gt, proposals = _coords(gt, proposals)
    if native_on(gt.device):
        return torch.ops.mrcnn_bench.encode_boxes(gt, proposals.to(gt.dtype), weights)
    return fallback.encode_boxes(gt, proposals.to(gt.dtype), weights)


def decode_boxes(
    deltas: torch.Tensor,
    boxes: torch.Tensor,
    weights=(1.0, 1.0, 1.0, 1.0),
    scale_clamp: float = 4.135166556742356,  # log(1000 / 16), as torchvision and Detectron
    clip_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boxes [N, 4k] from deltas [N, 4k] applied to ``boxes`` [N, 4]; clipped to (h, w) if given."""
    weights = [float(w) for w in weights]
    clip = None if clip_hw is None else [int(clip_hw[0]), int(clip_hw[1])]
    deltas, boxes = _coords(deltas, boxes)
    if native_on(deltas.device):
        return torch.ops.mrcnn_bench.decode_boxes(
            deltas, boxes.to(deltas.dtype), weights, float(scale_clamp), clip
        )
    return fallback.decode_boxes(deltas, boxes.to(deltas.dtype), weights, float(scale_clamp), clip)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, M, M] mask probabilities pasted into [N, height, width] images at ``boxes``, as
    torchvision's paste_masks_in_image (padding 1)."""
    if native_on(masks.device):
        return torch.ops.mrcnn_bench.paste_masks(masks, boxes, int(height), int(width))
    return fallback.paste_masks(masks, boxes, int(height), int(width))


__all__ = [
    "NATIVE",
    "CUDA_KERNELS",
    "backend",
    "native_on",
    "roi_align",
    "multilevel_roi_align",
    "fpn_levels",
    "nms",
    "batched_nms",
    "encode_boxes",
    "decode_boxes",
    "paste_masks",
]
