"""Pure-PyTorch versions of the native ops: used when the extension is not built.

Same arguments and results as the C++/CUDA kernels (the tests hold both to torchvision.ops).
They are written for correctness, not speed: RoIAlign gathers every sampling point, NMS is a
Python loop over kept boxes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _bilinear_gather(
    flat: torch.Tensor, batch: torch.Tensor, y: torch.Tensor, x: torch.Tensor, height: int, width: int
):
    """Bilinear samples at (y, x) ([P]) of image ``batch`` ([P]) of ``flat`` ([N*H*W, C]) -> [P, C]."""
    valid = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y_low = y.floor().long().clamp(max=height - 1)
    x_low = x.floor().long().clamp(max=width - 1)
    y = torch.where(y_low >= height - 1, y_low.to(y.dtype), y)
    x = torch.where(x_low >= width - 1, x_low.to(x.dtype), x)
    y_high = (y_low + 1).clamp(max=height - 1)
    x_high = (x_low + 1).clamp(max=width - 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx

    def at(yy, xx):
        return flat[(batch * height + yy) * width + xx]

    out = (
        (hy * hx)[:, None] * at(y_low, x_low)
        + (hy * lx)[:, None] * at(y_low, x_high)
        + (ly * hx)[:, None] * at(y_high, x_low)
        + (ly * lx)[:, None] * at(y_high, x_high)
    )
    return out * valid[:, None].to(out.dtype)


def roi_align(
    input, rois, spatial_scale: float, pooled_h: int, pooled_w: int, sampling_ratio: int, aligned: bool
):
    N, C, H, W = input.shape
    K = rois.shape[0]
    # An empty result is still connected to ``input``, like the native op's (zero) gradient.
    out = input.new_zeros((K, C, pooled_h, pooled_w)) + 0 * input.sum()
    if K == 0:
        return out
    offset = 0.5 if aligned else 0.0
    batch = rois[:, 0].long()
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
    if sampling_ratio > 0:
        grid_h = torch.full_like(batch, sampling_ratio)
        grid_w = torch.full_like(batch, sampling_ratio)
    else:
        grid_h = torch.ceil(roi_h / pooled_h).long()
        grid_w = torch.ceil(roi_w / pooled_w).long()
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)
    gh_max, gw_max = int(grid_h.max()), int(grid_w.max())
    if gh_max == 0 or gw_max == 0:
        return out
    # every (roi, ph, pw, iy, ix) sampling point, masked where iy/ix exceed that roi's grid
    ph = torch.arange(pooled_h, device=input.device, dtype=input.dtype)
    pw = torch.arange(pooled_w, device=input.device, dtype=input.dtype)
    iy = torch.arange(gh_max, device=input.device)
    ix = torch.arange(gw_max, device=input.device)
    ys = (
        y1[:, None, None]
        + ph[None, :, None] * bin_h[:, None, None]
        + (iy[None, None, :].to(input.dtype) + 0.5)
        * bin_h[:, None, None]
        / grid_h[:, None, None].clamp(min=1)
    )  # [K, ph, gy]
    xs = (
        x1[:, None, None]
        + pw[None, :, None] * bin_w[:, None, None]
        + (ix[None, None, :].to(input.dtype) + 0.5)
        * bin_w[:, None, None]
        / grid_w[:, None, None].clamp(min=1)
    )  # [K, pw, gx]
    Y = ys[:, :, None, :, None].expand(K, pooled_h, pooled_w, gh_max, gw_max)
    X = xs[:, None, :, None, :].expand(K, pooled_h, pooled_w, gh_max, gw_max)
    mask = (iy[None, :, None] < grid_h[:, None, None]) & (
        ix[None, None, :] < grid_w[:, None, None]
    )  # [K, gy, gx]
    mask = mask[:, None, None].expand(K, pooled_h, pooled_w, gh_max, gw_max)
    B = batch[:, None, None, None, None].expand_as(Y)
    flat = input.permute(0, 2, 3, 1).reshape(N * H * W, C)
    vals = _bilinear_gather(flat, B.reshape(-1), Y.reshape(-1), X.reshape(-1), H, W)  # [P, C]
    vals = vals * mask.reshape(-1, 1).to(vals.dtype)
    vals = vals.view(K, pooled_h, pooled_w, gh_max * gw_max, C).sum(3)
    return (vals / count[:, None, None, None]).permute(0, 3, 1, 2).contiguous()


def fpn_levels(rois, k_min: int, k_max: int, canonical_level: int = 4, canonical_scale: int = 224):
    """Level index (0 = k_min) of every RoI, as torchvision's LevelMapper."""
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    s = torch.sqrt(area.float())
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(1e-6, dtype=s.dtype))
    lvl = torch.nan_to_num(lvl, nan=float(k_min)).clamp(min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


def multilevel_roi_align(
    features,
    rois,
    scales,
    pooled_h,
    pooled_w,
    sampling_ratio,
    aligned,
    canonical_level,
    canonical_scale,
    roi_align=roi_align,
):
    """One ``roi_align(feat, rois, scale, ph, pw, sampling_ratio, aligned)`` call per FPN level (this
    module's kernel by default; ops.multilevel_roi_align(fused=False) passes the native one)."""
    k_min = round(-math.log2(scales[0]))
    levels = fpn_levels(rois, k_min, k_min + len(features) - 1, canonical_level, canonical_scale)
    C = features[0].shape[1]
    out = features[0].new_zeros((rois.shape[0], C, pooled_h, pooled_w))
    for level, (feat, scale) in enumerate(zip(features, scales)):
        idx = torch.nonzero(levels == level).squeeze(1)
        if idx.numel():
            out = out.index_put(
                (idx,), roi_align(feat, rois[idx], scale, pooled_h, pooled_w, sampling_ratio, aligned)
            )
    return out


def _iou_one_to_many(box, boxes):
    ix = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])).clamp(min=0)
    iy = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])).clamp(min=0)
    inter = ix * iy
    union = (
        (box[2] - box[0]) * (box[3] - box[1])
        + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        - inter
    )
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, stable=True, descending=True).indices
    b = boxes[order].float()
    cls = idxs[order] if idxs is not None else None
    removed = torch.zeros(b.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(b.shape[0]):
        if removed[i]:
            continue
        keep.append(i)
        suppress = _iou_one_to_many(b[i], b) > iou_threshold
        if cls is not None:
            suppress &= cls == cls[i]
        removed |= suppress
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def nms(boxes, scores, iou_threshold: float):
    return batched_nms(boxes, scores, None, iou_threshold)


def encode_boxes(gt, proposals, weights):
    wx, wy, ww, wh = weights
    pw = proposals[:, 2] - proposals[:, 0]
    ph = proposals[:, 3] - proposals[:, 1]
    px = proposals[:, 0] + 0.5 * pw
    py = proposals[:, 1] + 0.5 * ph
    gw = gt[:, 2] - gt[:, 0]
    gh = gt[:, 3] - gt[:, 1]
    gx = gt[:, 0] + 0.5 * gw
    gy = gt[:, 1] + 0.5 * gh
    return torch.stack(
        [wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1
    )


def decode_boxes(deltas, boxes, weights, scale_clamp: float, clip_hw=None):
    wx, wy, ww, wh = weights
    n = deltas.shape[0]
    d = deltas.reshape(n, deltas.shape[1] // 4, 4)
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    cx = boxes[:, 0][:, None] + 0.5 * w
    cy = boxes[:, 1][:, None] + 0.5 * h
    dw = (d[..., 2] / ww).clamp(max=scale_clamp)
    dh = (d[..., 3] / wh).clamp(max=scale_clamp)
    pcx = d[..., 0] / wx * w + cx
    pcy = d[..., 1] / wy * h + cy
    pw = torch.exp(dw) * w
    ph = torch.exp(dh) * h
    out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2)
    if clip_hw is not None:
        out[..., 0::2] = out[..., 0::2].clamp(min=0, max=clip_hw[1])
        out[..., 1::2] = out[..., 1::2].clamp(min=0, max=clip_hw[0])
    return out.reshape(n, deltas.shape[1])


def paste_masks(masks, boxes, height: int, width: int):
    """[N, M, M] mask probabilities into [N, H, W] images, as torchvision's paste_masks_in_image."""
    n, m = masks.shape[0], masks.shape[-1]
    out = masks.new_zeros((n, height, width))
    if n == 0:
        return out
    scale = float(m + 2) / m
    padded = F.pad(masks, (1, 1, 1, 1))
    b = boxes.float()
    w_half = (b[:, 2] - b[:, 0]) * 0.5 * scale
    h_half = (b[:, 3] - b[:, 1]) * 0.5 * scale
    x_c = (b[:, 2] + b[:, 0]) * 0.5
    y_c = (b[:, 3] + b[:, 1]) * 0.5
    ib = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int64).tolist()
    for i, (x0, y0, x1, y1) in enumerate(ib):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[
            0, 0
        ]
        ys, ye = max(y0, 0), min(y1 + 1, height)
        xs, xe = max(x0, 0), min(x1 + 1, width)
        if ys < ye and xs < xe:
            out[i, ys:ye, xs:xe] = resized[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return out
