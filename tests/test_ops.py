"""The reference implementation's ops against torchvision.ops: values, gradients, edge cases.

Each test runs on the native kernels and on the pure-PyTorch fallback, on the CPU, and on CUDA where
a GPU is present (marked ``cuda``).
"""

import subprocess
import sys

import pytest
import torch
import torchvision
from mrcnn_bench.reference_impl import ops
from mrcnn_bench.reference_impl.ops import fallback
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


class Native:
    name = "native"
    roi_align = staticmethod(ops.roi_align)
    multilevel_roi_align = staticmethod(ops.multilevel_roi_align)
    nms = staticmethod(ops.nms)
    batched_nms = staticmethod(ops.batched_nms)
    encode_boxes = staticmethod(ops.encode_boxes)
    decode_boxes = staticmethod(ops.decode_boxes)
    paste_masks = staticmethod(ops.paste_masks)


class Fallback:
    name = "fallback"

    @staticmethod
    def roi_align(x, rois, size, scale, sr, aligned):
        return fallback.roi_align(x, rois.to(x.dtype), scale, size[0], size[1], sr, aligned)

    @staticmethod
    def multilevel_roi_align(feats, rois, scales, size, sr, aligned):
        return fallback.multilevel_roi_align(
            feats, rois.to(feats[0].dtype), scales, size[0], size[1], sr, aligned, 4, 224
        )

    nms = staticmethod(fallback.nms)
    batched_nms = staticmethod(fallback.batched_nms)
    encode_boxes = staticmethod(fallback.encode_boxes)

    @staticmethod
    def decode_boxes(d, b, w, scale_clamp=4.135166556742356, clip_hw=None):
        return fallback.decode_boxes(d, b, w, scale_clamp, clip_hw)

    paste_masks = staticmethod(fallback.paste_masks)


IMPLS = [
    pytest.param(Native, id="native", marks=pytest.mark.skipif(not ops.NATIVE, reason="extension not built")),
    pytest.param(Fallback, id="fallback"),
]


def random_boxes(n, size=100.0, min_wh=0.0, gen=None, device="cpu", dtype=torch.float32):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size / 2 + min_wh
    return torch.cat([xy, xy + wh], 1).to(device=device, dtype=dtype)


def rois_with_edge_cases(n, n_images, size, gen, device, dtype):
    boxes = random_boxes(n, size, 0.5, gen, device, dtype)
    extra = torch.tensor(
        [
            [5.0, 5.0, 5.0, 5.0],  # zero size
            [10.0, 10.0, 4.0, 6.0],  # inverted
            [-20.0, -20.0, -5.0, -5.0],  # outside the image
            [size - 3, size - 3, size + 30, size + 30],  # partly outside
            [0.0, 0.0, size, size],  # the whole image
        ],
        device=device,
        dtype=dtype,
    )
    boxes = torch.cat([boxes, extra])
    batch = torch.randint(0, n_images, (boxes.shape[0], 1), generator=gen).to(device=device, dtype=dtype)
    return torch.cat([batch, boxes], 1)


# ---------------------------------------------------------------------------------- RoIAlign
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_torchvision(device, impl, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 25, 31, generator=gen).to(device).requires_grad_()
    rois = rois_with_edge_cases(60, 2, 100.0, gen, device, torch.float32)
    for size, scale in (((7, 7), 0.25), ((14, 14), 0.125), ((3, 5), 0.3)):
        ours = impl.roi_align(x, rois, size, scale, sampling_ratio, aligned)
        ref = torchvision.ops.roi_align(x, rois, size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn(ref.shape, generator=gen).to(device)
        (g_ours,) = torch.autograd.grad(ours, x, g)
        (g_ref,) = torch.autograd.grad(ref, x, g)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gradcheck_double(device, impl, aligned):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 8, 9, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    rois = torch.tensor(
        [[0, 1.3, 0.7, 6.2, 5.9], [0, 0.0, 2.0, 8.0, 7.5]], dtype=torch.float64, device=device
    )
    assert torch.autograd.gradcheck(lambda t: impl.roi_align(t, rois, (3, 3), 1.0, 0, aligned), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_roi_align_empty_and_dtypes(device, impl):
    x = torch.randn(1, 4, 10, 10, device=device, requires_grad=True)
    out = impl.roi_align(x, torch.zeros(0, 5, device=device), (7, 7), 1.0, 0, True)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(x.grad) == 0
    if impl is Native:
        rois = torch.tensor([[0, 1.0, 1.0, 8.0, 8.0]], device=device)
        for dtype in (torch.bfloat16, torch.float16):
            xh = x.detach().to(dtype)
            got = impl.roi_align(xh, rois, (7, 7), 1.0, 2, True)
            ref = torchvision.ops.roi_align(x.detach(), rois, (7, 7), 1.0, 2, True)
            assert got.dtype == dtype
            torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


def _pyramid(device, gen, n_images=2, channels=8, image=(512, 640), dtype=torch.float32):
    feats = {}
    for i, stride in enumerate((4, 8, 16, 32)):
        feats[str(i)] = torch.randn(
            n_images, channels, image[0] // stride, image[1] // stride, generator=gen, dtype=dtype
        ).to(device)
    return feats


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("output_size, sampling_ratio", [((7, 7), 2), ((14, 14), 0)])
def test_multilevel_roi_align_matches_multiscale_roi_align(device, impl, output_size, sampling_ratio):
    gen = torch.Generator().manual_seed(2)
    feats = _pyramid(device, gen)
    for f in feats.values():
        f.requires_grad_()
    image_sizes = [(512, 640), (480, 600)]
    # boxes from 1 to ~750 px: every FPN level (P2-P5) gets some
    boxes = [random_boxes(300, 500.0, 1.0, gen, device) for _ in range(2)]
    boxes[0] = torch.cat(
        [boxes[0], torch.tensor([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 640.0, 512.0]], device=device)]
    )
    # torchvision's MultiScaleRoIAlign always uses aligned=False
    ref = MultiScaleRoIAlign(list(feats), output_size, sampling_ratio)(feats, boxes, image_sizes)
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i), device=device), b], 1) for i, b in enumerate(boxes)]
    )
    ours = impl.multilevel_roi_align(
        list(feats.values()), rois, [1 / 4, 1 / 8, 1 / 16, 1 / 32], output_size, sampling_ratio, False
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    levels = ops.fpn_levels(rois, 2, 5)
    assert set(levels.tolist()) == {0, 1, 2, 3}  # the boxes cover every level
    g = torch.randn(ref.shape, generator=gen).to(device)
    g_ours = torch.autograd.grad(ours, list(feats.values()), g)
    g_ref = torch.autograd.grad(ref, list(feats.values()), g)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_multilevel_gradcheck_and_many_levels(device, impl):
    gen = torch.Generator().manual_seed(3)
    feats = [
        torch.randn(1, 2, 32 // 2**i, 32 // 2**i, generator=gen, dtype=torch.float64)
        .to(device)
        .requires_grad_()
        for i in range(5)
    ]
    scales = [1 / 2**i for i in range(5)]  # levels 0..4: k_min = 0
    rois = torch.tensor(
        [[0, 0, 0, 2, 2], [0, 1, 1, 30, 31], [0, 0, 0, 300, 300], [0, 4, 4, 20, 12]],
        dtype=torch.float64,
        device=device,
    )
    fn = lambda *fs: impl.multilevel_roi_align(list(fs), rois, scales, (2, 2), 2, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(feats))


@pytest.mark.skipif(not ops.NATIVE, reason="extension not built")
def test_multilevel_rejects_bad_arguments():
    f = torch.randn(1, 2, 8, 8)
    with pytest.raises(RuntimeError, match="one scale per feature map"):
        ops.multilevel_roi_align([f, f], torch.zeros(1, 5), [0.25], 7)
    with pytest.raises(RuntimeError, match="same batch and channels"):
        ops.multilevel_roi_align([f, torch.randn(1, 3, 4, 4)], torch.zeros(1, 5), [0.25, 0.125], 7)
    with pytest.raises(RuntimeError, match=r"rois must be \[K, 5\]"):
        ops.roi_align(f, torch.zeros(3, 4), 7)


# ---------------------------------------------------------------------------------------- NMS
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n, threshold", [(0, 0.5), (1, 0.5), (50, 0.3), (700, 0.5), (3000, 0.7)])
def test_nms_matches_torchvision(device, impl, n, threshold):
    gen = torch.Generator().manual_seed(n)
    boxes = random_boxes(n, 200.0, 0.0, gen, device)
    if n > 10:
        boxes[:5, 2:] = boxes[:5, :2]  # degenerate: zero area
    scores = torch.rand(n, generator=gen).to(device)
    idxs = torch.randint(0, 5, (n,), generator=gen).to(device)
    assert torch.equal(impl.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))
    assert torch.equal(
        impl.batched_nms(boxes, scores, idxs, threshold),
        torchvision.ops.batched_nms(boxes, scores, idxs, threshold),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_nms_keeps_identical_boxes_once(device):
    boxes = torch.tensor([[0, 0, 10, 10.0]] * 4 + [[20, 20, 30, 30.0]], device=device)
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8, 0.1], device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 4]
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 1, 1, 0, 0], device=device), 0.5).tolist() == [
        1,
        3,
        4,
    ]


# --------------------------------------------------------------------------------- box coding
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coding_matches_torchvision(device, impl, weights):
    gen = torch.Generator().manual_seed(4)
    coder = BoxCoder(weights)
    proposals = random_boxes(500, 300.0, 1.0, gen, device)
    gt = random_boxes(500, 300.0, 1.0, gen, device)
    torch.testing.assert_close(
        impl.encode_boxes(gt, proposals, weights), coder.encode_single(gt, proposals), rtol=1e-5, atol=1e-5
    )
    deltas = torch.randn(500, 4 * 3, generator=gen).to(device) * 2
    deltas[0, 2] = 100.0  # clamped at log(1000 / 16)
    ref = coder.decode_single(deltas, proposals)
    torch.testing.assert_close(impl.decode_boxes(deltas, proposals, weights), ref, rtol=1e-5, atol=1e-4)
    clipped = box_ops.clip_boxes_to_image(ref.reshape(-1, 4), (200, 250)).reshape(ref.shape)
    torch.testing.assert_close(
        impl.decode_boxes(deltas, proposals, weights, clip_hw=(200, 250)), clipped, rtol=1e-5, atol=1e-4
    )
    empty = torch.zeros(0, 4, device=device)
    assert impl.encode_boxes(empty, empty, weights).shape == (0, 4)
    assert impl.decode_boxes(torch.zeros(0, 8, device=device), empty, weights).shape == (0, 8)


# --------------------------------------------------------------------------------- mask paste
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_paste_masks_matches_torchvision(device, impl):
    gen = torch.Generator().manual_seed(5)
    n = 40
    masks = torch.rand(n, 1, 28, 28, generator=gen).to(device)
    # clipped to the image, as the model's boxes are (torchvision's own paste mishandles boxes that lie
    # wholly outside the image); the expanded paste box still reaches past the image's edges
    boxes = box_ops.clip_boxes_to_image(random_boxes(n, 180.0, 0.0, gen, device), (120, 200))
    boxes[0] = torch.tensor([0.0, 0.0, 40.0, 50.0])
    boxes[1] = torch.tensor([150.0, 90.0, 260.0, 150.0])
    boxes[2] = torch.tensor([20.0, 20.0, 20.0, 20.0])  # empty
    ref = paste_masks_in_image(masks, boxes, (120, 200), padding=1)[:, 0]
    ours = impl.paste_masks(masks[:, 0], boxes, 120, 200)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert impl.paste_masks(masks[:0, 0], boxes[:0], 120, 200).shape == (0, 120, 200)


# ------------------------------------------------------------------ registration and tracing
@pytest.mark.skipif(not ops.NATIVE, reason="extension not built")
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_schemas_fake_kernels_and_autograd(device):
    x = torch.randn(2, 3, 12, 12, device=device, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 7.0], [1, 0.0, 2.0, 11.0, 11.0]], device=device)
    torch.library.opcheck(torch.ops.mrcnn_bench.roi_align.default, (x, rois, 0.5, 3, 3, 0, True))
    feats = [
        torch.randn(2, 3, 16, 16, device=device, requires_grad=True),
        torch.randn(2, 3, 8, 8, device=device, requires_grad=True),
    ]
    torch.library.opcheck(
        torch.ops.mrcnn_bench.multilevel_roi_align.default,
        (feats, rois, [0.25, 0.125], 2, 2, 2, True, 4, 224),
    )
    b = random_boxes(20, device=device)
    torch.library.opcheck(torch.ops.mrcnn_bench.encode_boxes.default, (b, b.flip(0), [1.0, 1.0, 1.0, 1.0]))
    torch.library.opcheck(
        torch.ops.mrcnn_bench.decode_boxes.default,
        (torch.randn(20, 8, device=device), b, [1.0, 1.0, 1.0, 1.0], 4.0, [30, 40]),
    )
    torch.library.opcheck(
        torch.ops.mrcnn_bench.paste_masks.default, (torch.rand(20, 14, 14, device=device), b, 30, 40)
    )


# ------------------------------------------------------- float64 arguments, determinism, layouts
@pytest.mark.skipif(not ops.NATIVE, reason="extension not built")
@pytest.mark.parametrize("device", DEVICES)
def test_float64_arguments_are_not_rounded_to_float(device):
    """Scales, thresholds and weights reach a float64 computation unrounded, on every device: each
    case below comes out differently if the argument passes through float32."""
    # NMS: IoU 0.5 + 5e-10 against a threshold of 0.5 + 1e-9 (float32: 0.5): both boxes stay.
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0.5 + 5e-10]], dtype=torch.float64, device=device)
    scores = torch.tensor([0.9, 0.8], dtype=torch.float64, device=device)
    assert ops.nms(boxes, scores, 0.5 + 1e-9).tolist() == [0, 1]
    # RoIAlign with a spatial scale float32 cannot hold: as the float64 pure-PyTorch computation
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 40, 40, generator=gen, dtype=torch.float64).to(device)
    rois = torch.tensor([[0, 3.3, 7.1, 91.7, 80.2]], dtype=torch.float64, device=device)
    scale = 1 / 2.3
    want = fallback.roi_align(x, rois, scale, 7, 7, 2, True)
    torch.testing.assert_close(ops.roi_align(x, rois, 7, scale, 2, True), want, rtol=1e-12, atol=1e-12)
    feats = [x, x[:, :, ::2, ::2].contiguous()]
    ml_want = fallback.multilevel_roi_align(feats, rois, [scale, scale / 2], 7, 7, 2, True, 4, 224)
    torch.testing.assert_close(
        ops.multilevel_roi_align(feats, rois, [scale, scale / 2], 7, 2, True), ml_want, rtol=1e-12, atol=1e-12
    )
    # box coding with weights float32 rounds (10/3), a clamp and a clip
    weights = (10 / 3, 10 / 3, 5 / 3, 5 / 3)
    b = random_boxes(50, 300.0, 1.0, gen, device, torch.float64)
    gt = random_boxes(50, 300.0, 1.0, gen, device, torch.float64)
    torch.testing.assert_close(
        ops.encode_boxes(gt, b, weights), fallback.encode_boxes(gt, b, list(weights)), rtol=1e-12, atol=1e-12
    )
    d = torch.randn(50, 8, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(
        ops.decode_boxes(d, b, weights, 1 / 3, (201, 255)),
        fallback.decode_boxes(d, b, list(weights), 1 / 3, [201, 255]),
        rtol=1e-12,
        atol=1e-12,
    )


def _roi_align_backward_twice(device):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 30, 30, generator=gen).to(device).requires_grad_()
    rois = rois_with_edge_cases(300, 2, 120.0, gen, device, torch.float32)  # many overlaps
    grads = []
    for _ in range(2):
        (g,) = torch.autograd.grad(ops.roi_align(x, rois, 7, 0.25, 2, True).sum(), x)
        grads.append(g)
    return grads


@pytest.mark.skipif(not ops.NATIVE, reason="extension not built")
def test_roi_align_backward_on_the_cpu_is_deterministic():
    """The CPU backward splits the work by channel (no atomics): allowed under
    use_deterministic_algorithms, and the same bits twice."""
    torch.use_deterministic_algorithms(True)
    try:
        first, second = _roi_align_backward_twice("cpu")
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(first, second)


@pytest.mark.cuda
@pytest.mark.skipif(not ops.NATIVE, reason="extension not built")
def test_roi_align_backward_on_cuda_says_it_is_nondeterministic():
    """The CUDA backwards add with atomics: torch.use_deterministic_algorithms(True) must refuse them
    (warn_only turns the refusal into a warning), as it does torchvision's own."""
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="roi_align_backward.*does not have a deterministic"):
            _roi_align_backward_twice("cuda")
        feats = [torch.randn(1, 2, 16, 16, device="cuda", requires_grad=True)]
        rois = torch.tensor([[0, 1.0, 1.0, 30.0, 30.0]], device="cuda")
        with pytest.raises(
            RuntimeError, match="multilevel_roi_align_backward.*does not have a deterministic"
        ):
            ops.multilevel_roi_align(feats, rois, [0.25], 7).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
def test_multilevel_roi_align_on_channels_last_levels(device, impl):
    """FPN levels in channels-last (benchmark.channels_last): the same values and gradients as
    contiguous ones, gradients in each level's shape."""
    gen = torch.Generator().manual_seed(8)
    feats = [torch.randn(2, 8, 64 // 2**i, 48 // 2**i, generator=gen).to(device) for i in range(4)]
    rois = rois_with_edge_cases(60, 2, 900.0, gen, device, torch.float32)  # every level gets RoIs
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        fs = [f.to(memory_format=layout).requires_grad_() for f in feats]
        out = impl.multilevel_roi_align(fs, rois, scales, (7, 7), 2, True)
        grads = torch.autograd.grad((out * out).sum(), fs)
        assert [g.shape for g in grads] == [f.shape for f in fs]
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    # the CPU kernels read and write channels-last where it lies, in the NCHW kernels' order: the same bits
    exact = device == "cpu" and impl is Native
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=0 if exact else 1e-6, atol=0 if exact else 1e-6)
    if exact:
        assert out_b.is_contiguous(memory_format=torch.channels_last)
        assert all(g.is_contiguous(memory_format=torch.channels_last) for g in grads_b)


@pytest.mark.skipif(not ops.NATIVE, reason="extension not built")
def test_roi_align_on_a_channels_last_map_on_the_cpu():
    """The single-level op (``reference.fused_pooler: false`` pools each level with it) on a
    channels-last map: torchvision's values, the same bits as NCHW, a channels-last result; its fake
    kernels agree with the real ones on strides (torch.compile), for both ops."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 16, 40, 30, generator=gen)
    rois = rois_with_edge_cases(80, 2, 160.0, gen, "cpu", torch.float32)
    nchw = ops.roi_align(x, rois, 7, 0.25, 0, True)
    nhwc = ops.roi_align(x.to(memory_format=torch.channels_last), rois, 7, 0.25, 0, True)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    torch.testing.assert_close(nhwc, nchw, rtol=0, atol=0)
    torch.testing.assert_close(
        nhwc, torchvision.ops.roi_align(x, rois, 7, 0.25, 0, True), rtol=1e-5, atol=1e-5
    )
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    (g,) = torch.autograd.grad((ops.roi_align(xc, rois, 7, 0.25, 0, True) ** 2).sum(), xc)
    xn = x.clone().requires_grad_()
    (want,) = torch.autograd.grad((ops.roi_align(xn, rois, 7, 0.25, 0, True) ** 2).sum(), xn)
    torch.testing.assert_close(g, want, rtol=0, atol=0)
    torch.library.opcheck(torch.ops.mrcnn_bench.roi_align.default, (xc, rois[:10], 0.25, 3, 3, 0, True))
    feats = [
        torch.randn(2, 3, 16, 16, generator=gen).to(memory_format=torch.channels_last).requires_grad_(),
        torch.randn(2, 3, 8, 8, generator=gen).to(memory_format=torch.channels_last).requires_grad_(),
    ]
    torch.library.opcheck(
        torch.ops.mrcnn_bench.multilevel_roi_align.default,
        (feats, rois[:10], [0.25, 0.125], 2, 2, 2, True, 4, 224),
    )


# ---------------------------------------------------------- an extension built without CUDA
def test_without_cuda_kernels_cuda_tensors_take_the_fallback(monkeypatch):
    monkeypatch.setattr(ops, "CUDA_KERNELS", False)
    assert ops.native_on("cpu") == ops.NATIVE
    assert not ops.native_on("cuda") and not ops.native_on(torch.device("cuda", 1))
    if ops.NATIVE:
        assert ops.backend().startswith("native (cpu only: the extension was built without CUDA kernels")
        assert "rebuild with CUDA_HOME set" in ops.backend()


@pytest.mark.cuda
def test_without_cuda_kernels_the_ops_still_run_on_cuda(monkeypatch):
    monkeypatch.setattr(ops, "CUDA_KERNELS", False)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 4, 20, 20, generator=gen).cuda()
    rois = rois_with_edge_cases(20, 1, 80.0, gen, "cuda", torch.float32)
    torch.testing.assert_close(
        ops.roi_align(x, rois, 7, 0.25, 2, True), torchvision.ops.roi_align(x, rois, 7, 0.25, 2, True)
    )
    boxes, scores = random_boxes(200, device="cuda", gen=gen), torch.rand(200, generator=gen).cuda()
    assert torch.equal(ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.skipif(not ops.NATIVE, reason="extension not built")
def test_torch_compile_traces_through_the_ops():
    torch._dynamo.reset()
    feats = [torch.randn(1, 4, 32, 32, requires_grad=True), torch.randn(1, 4, 16, 16, requires_grad=True)]
    rois = torch.tensor([[0, 1.0, 1.0, 20.0, 20.0], [0, 0.0, 0.0, 200.0, 200.0]])  # levels 2 and 3

    def step(f0, f1):
        pooled = ops.multilevel_roi_align([f0, f1], rois, [0.25, 0.125], 3, 2, True)
        return (pooled * pooled).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(*feats)
    torch.testing.assert_close(loss, step(*feats))
    loss.backward()
    assert feats[0].grad is not None and feats[1].grad.abs().sum() > 0


def test_backend_is_reported_and_fallback_can_be_forced():
    assert ops.backend().startswith("native" if ops.NATIVE else "fallback")
    code = "from mrcnn_bench.reference_impl import ops; print(ops.backend())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"MRCNN_BENCH_OPS": "fallback", "PATH": ""},
    )
    assert out.stdout.strip() == "fallback: MRCNN_BENCH_OPS=fallback", out.stderr
