"""The rules that change the work or the learning (anchor rounding, the RPN's low-quality matches, the
resize rule, mask targets, the minimum proposal size) as canonical keys: the reference runs each both
ways, and each way equals the framework that runs it so, computed by that framework's own code."""

import numpy as np
import pytest
import torch
from conftest import run_cli
from mrcnn_bench.reference_impl.modeling.preprocess import Preprocessor
from mrcnn_bench.reference_impl.modeling.rpn import RPN, AnchorGenerator
from mrcnn_bench.reference_impl.ops import roi_align
from mrcnn_bench.reference_impl.structures import Matcher, mask_targets, pairwise_iou

SIZES, RATIOS = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)


def _detectron2():
    """detectron2 importable in this interpreter (the adapter's shims applied), or the test skipped."""
    pytest.importorskip("detectron2")
    from mrcnn_bench.adapters.detectron2 import _apply_shims

    _apply_shims()


# ------------------------------------------------------------------------------------------- anchors
def test_rounded_anchors_are_torchvisions():
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors

    tv = TorchvisionAnchors(tuple((s,) for s in SIZES), (RATIOS,) * len(SIZES))
    ours = AnchorGenerator(sizes=SIZES, aspect_ratios=RATIOS, round_to_pixels=True)
    for theirs, mine in zip(tv.cell_anchors, ours.cell_anchors):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_fractional_anchors_are_detectron2s_and_mmdets_and_torchvisions_part():
    _detectron2()
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from mrcnn_bench.adapters.torchvision import parts

    d2 = DefaultAnchorGenerator(
        sizes=[[s] for s in SIZES], aspect_ratios=[list(RATIOS)], strides=[4, 8, 16, 32, 64], offset=0.0
    )
    ours = AnchorGenerator(sizes=SIZES, aspect_ratios=RATIOS, round_to_pixels=False)
    tv_part = parts().anchors(tuple((s,) for s in SIZES), (RATIOS,) * len(SIZES))
    for theirs, mine, part in zip(d2.cell_anchors, ours.cell_anchors, tv_part.cell_anchors):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(part, theirs, rtol=1e-6, atol=1e-5)
    # the 32-px ratio-0.5 anchor: 45.25 x 22.63 kept, 46 x 22 (area 1012) rounded
    rounded = AnchorGenerator(sizes=SIZES, aspect_ratios=RATIOS, round_to_pixels=True).cell_anchors[0][0]
    assert (rounded[2] - rounded[0]) * (rounded[3] - rounded[1]) == 1012
    frac = ours.cell_anchors[0][0]
    assert float((frac[2] - frac[0]) * (frac[3] - frac[1])) == pytest.approx(1024, rel=1e-5)
    if pytest.importorskip("mmdet"):
        from mmdet.models.task_modules.prior_generators import AnchorGenerator as MMDetAnchors

        mm = MMDetAnchors(strides=[4, 8, 16, 32, 64], ratios=list(RATIOS), scales=[8])
        for theirs, mine in zip(mm.base_anchors, ours.cell_anchors):
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- low-quality matches
def _boxes_and_anchors(seed=0, boxes=12):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat(
        AnchorGenerator(sizes=SIZES, aspect_ratios=RATIOS)(
            (192, 256), [(48, 64), (24, 32), (12, 16), (6, 8), (3, 4)], "cpu", torch.float32
        )
    )
    xy = torch.rand(boxes, 2, generator=g) * torch.tensor([230.0, 170.0])
    wh = 4 + torch.rand(boxes, 2, generator=g) * 40  # small objects: most under the 32-px anchor
    return torch.cat([xy, xy + wh], 1), anchors


@pytest.mark.parametrize("min_iou", [0.0, 0.3])
def test_low_quality_rule_matches_mmdets_assigner(min_iou):
    """Positive anchors of the reference's Matcher with a minimum IoU for low-quality matches = mmdet's
    MaxIoUAssigner with that ``min_pos_iou`` (and, at 0, torchvision's Matcher)."""
    pytest.importorskip("mmdet")
    from mmdet.models.task_modules.assigners import MaxIoUAssigner
    from mmengine.structures import InstanceData
    from torchvision.models.detection._utils import Matcher as TorchvisionMatcher

    gt, anchors = _boxes_and_anchors()
    iou = pairwise_iou(gt, anchors)
    ours = Matcher(0.7, 0.3, allow_low_quality_matches=True, low_quality_min=min_iou)(iou) >= 0
    assigner = MaxIoUAssigner(
        pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=min_iou, match_low_quality=True, ignore_iof_thr=-1
    )
    result = assigner.assign(
        InstanceData(priors=anchors), InstanceData(bboxes=gt, labels=torch.zeros(len(gt), dtype=torch.long))
    )
    assert torch.equal(ours, result.gt_inds > 0)
    off = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou) >= 0
    assert ours.sum() > off.sum()  # the rule matters on boxes this small
    if min_iou == 0:
        assert torch.equal(ours, TorchvisionMatcher(0.7, 0.3, allow_low_quality_matches=True)(iou) >= 0)
    else:  # some boxes' best anchor is under 0.3 and stays negative
        assert ours.sum() < (Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou) >= 0).sum()


def test_low_quality_rule_batched_equals_per_image():
    gt, anchors = _boxes_and_anchors(seed=1)
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True, low_quality_min=0.3)
    single = matcher(pairwise_iou(gt, anchors))
    padded = torch.cat([gt, torch.zeros(3, 4)])[None]
    valid = torch.tensor([[True] * len(gt) + [False] * 3])
    batched = matcher(torch.where(valid[..., None], pairwise_iou(padded, anchors), -1.0), valid)[0]
    assert torch.equal(single, batched)


# ------------------------------------------------------------------------------------------- resize
def _preprocessor(rounding):
    return Preprocessor(
        min_size_train=(192,),
        max_size_train=320,
        min_size_test=192,
        max_size_test=320,
        pixel_mean=(0, 0, 0),
        pixel_std=(1, 1, 1),
        resize_rounding=rounding,
    )


SHAPES = [
    (154, 192),
    (192, 154),
    (108, 192),
    (144, 192),
    (128, 192),
    (192, 192),
    (427, 640),
    (480, 640),
    (333, 500),
    (375, 500),
]


def test_resize_round_is_detectron2s_and_floor_is_torchvisions():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    _detectron2()
    from detectron2.data.transforms import ResizeShortestEdge
    from mrcnn_bench.adapters.torchvision import parts

    tv = GeneralizedRCNNTransform(192, 320, [0, 0, 0], [1, 1, 1]).eval()
    tv_round = parts().transform(192, 320, [0, 0, 0], [1, 1, 1]).eval()
    for h, w in SHAPES:
        image = torch.rand(3, h, w)
        assert _preprocessor("round").resized_size(h, w, 192.0, 320.0) == ResizeShortestEdge.get_output_shape(
            h, w, 192, 320
        )
        assert _preprocessor("floor").resized_size(h, w, 192.0, 320.0) == tuple(
            tv.resize(image, None)[0].shape[-2:]
        )
        assert _preprocessor("round").resized_size(h, w, 192.0, 320.0) == tuple(
            tv_round.resize(image, None)[0].shape[-2:]
        )
    # the float32 scale made 191 rows of this one (torchvision 192)
    assert _preprocessor("floor").resized_size(154, 192, 192.0, 320.0) == (192, 239)


def test_resize_scales_polygons_boxes_and_image_alike():
    pre = _preprocessor("round").eval()
    polygon = np.array([10.0, 20.0, 100.0, 20.0, 100.0, 90.0])
    target = {"boxes": torch.tensor([[10.0, 20.0, 100.0, 90.0]]), "polygons": [[polygon]]}
    image, out = pre._resize(torch.rand(3, 154, 192), target)
    sy, sx = image.shape[1] / 154, image.shape[2] / 192
    np.testing.assert_allclose(
        out["polygons"][0][0], [10 * sx, 20 * sy, 100 * sx, 20 * sy, 100 * sx, 90 * sy], rtol=1e-6
    )
    torch.testing.assert_close(out["boxes"], torch.tensor([[10 * sx, 20 * sy, 100 * sx, 90 * sy]]))


# ------------------------------------------------------------------------------------- mask targets
def _instances():
    """Two instances on a 120 x 160 image, as polygons and as their bitmasks; positive boxes around them."""
    from pycocotools import mask as mask_util

    polygons = [
        [np.array([20.0, 15.0, 90.0, 25.0, 70.0, 95.0, 25.0, 80.0])],
        [
            np.array([100.0, 40.0, 150.0, 45.0, 140.0, 110.0]),
            np.array([104.0, 10.0, 120.0, 10.0, 112.0, 30.0]),
        ],
    ]
    masks = np.stack(
        [
            mask_util.decode(mask_util.merge(mask_util.frPyObjects([p.tolist() for p in inst], 120, 160)))
            for inst in polygons
        ]
    )
    boxes = torch.tensor(
        [
            [18.0, 12.0, 93.5, 97.0],
            [30.2, 20.7, 80.1, 90.3],
            [98.0, 8.0, 152.0, 111.0],
            [101.5, 35.0, 147.0, 100.5],
        ]
    )
    matched = torch.tensor([0, 0, 1, 1])
    return polygons, torch.from_numpy(masks), boxes, matched


def test_polygon_targets_are_detectron2s():
    _detectron2()
    from detectron2.structures import PolygonMasks

    polygons, _, boxes, matched = _instances()
    ours = mask_targets("polygon", {"polygons": polygons}, boxes, matched, 28, roi_align)
    theirs = PolygonMasks([polygons[i] for i in matched.tolist()]).crop_and_resize(boxes, 28)
    assert torch.equal(ours.bool(), theirs)
    assert 0.2 < ours.mean() < 0.9  # a real mask, neither empty nor full


def test_binarized_bitmask_targets_are_detectron2s_and_soft_ones_torchvisions():
    _detectron2()
    from detectron2.structures import BitMasks
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    _, masks, boxes, matched = _instances()
    ours = mask_targets("bitmask_binarized", {"masks": masks}, boxes, matched, 28, roi_align)
    theirs = BitMasks(masks[matched].bool()).crop_and_resize(boxes, 28)
    # the native RoIAlign against torchvision's: a crop at exactly 0.5 may round to either side
    assert (ours.bool() != theirs).float().mean() < 1e-3
    assert set(ours.unique().tolist()) == {0.0, 1.0}
    soft = mask_targets("bitmask_soft", {"masks": masks}, boxes, matched, 28, roi_align)
    torch.testing.assert_close(soft, project_masks_on_boxes(masks, boxes, matched, 28), rtol=1e-5, atol=1e-5)
    assert ((soft > 0) & (soft < 1)).any()  # fractions at the edges


# ---------------------------------------------------------------------------------- proposal size
def test_min_proposal_size_keeps_sides_that_exceed_it():
    rpn = RPN(
        in_channels=8,
        anchor_sizes=SIZES,
        aspect_ratios=RATIOS,
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        nms_thresh=0.7,
        pre_nms_topk=(10, 10),
        post_nms_topk=(10, 10),
        min_proposal_size=2.0,
    )
    boxes = torch.tensor(
        [[[0.0, 0.0, 2.0, 10.0], [40.0, 0.0, 42.5, 10.0], [50.0, 50.0, 50.0, 60.0], [10.0, 10.0, 30.0, 30.0]]]
    )
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    kept = rpn._select_batched(boxes, scores, torch.zeros(1, 4, dtype=torch.long), [(100, 100)], 10)[0]
    assert kept.tolist() == [[40.0, 0.0, 42.5, 10.0], [10.0, 10.0, 30.0, 30.0]]
    rpn.min_proposal_size = 0.0  # detectron2's default: empty proposals only are dropped
    assert (
        len(rpn._select_batched(boxes, scores, torch.zeros(1, 4, dtype=torch.long), [(100, 100)], 10)[0]) == 3
    )
    from mrcnn_bench.reference_impl.structures import nonempty

    assert nonempty(boxes[0], 2.0, strictly=True).tolist() == [1, 3] and nonempty(
        boxes[0], 0.0, strictly=True
    ).tolist() == [0, 1, 3]
    assert nonempty(boxes[0], 2.0).tolist() == [
        0,
        1,
        3,
    ]  # torchvision's rule (>=), what the test-time path uses


# ------------------------------------------------------------------------------ what cannot be run
@pytest.mark.e2e
def test_a_value_a_framework_cannot_run_stops_the_run_naming_it(tmp_path):
    out = run_cli(
        "run",
        "--impl",
        "reference,torchvision",
        "--out",
        tmp_path,
        "--run-id",
        "x",
        "--set",
        "model.rpn.low_quality_min_iou=0.3",
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.rpn.low_quality_min_iou = 0.3: torchvision cannot run it" in out.stderr
    assert "--allow-divergent model.rpn.low_quality_min_iou" in out.stderr
    assert not (tmp_path / "x").exists()
    unknown = run_cli(
        "run",
        "--impl",
        "reference",
        "--out",
        tmp_path,
        "--run-id",
        "y",
        "--allow-divergent",
        "model.rpn.nope",
    )
    assert unknown.returncode == 2 and "unknown key(s) model.rpn.nope" in unknown.stderr


def test_every_adapter_declares_what_it_cannot_run():
    from mrcnn_bench.adapters import get_adapter
    from mrcnn_bench.harness.config.schema import load_config, resolve_config_path

    cfg = load_config(resolve_config_path("cpu_small"))
    # the canonical defaults: detectron2's rules, which the reference, detectron2 and mmdet all run
    assert get_adapter("reference").divergences(cfg) == {}
    assert get_adapter("detectron2").divergences(cfg) == {}
    assert get_adapter("mmdet").divergences(cfg) == {}
    assert set(get_adapter("torchvision").divergences(cfg)) == set(cfg.benchmark.allow_divergent)
    torchvision_like = cfg.with_overrides(
        {
            "model.anchors.round_to_pixels": True,
            "input.resize_rounding": "floor",
            "model.roi_heads.mask_target": "bitmask_soft",
        }
    )
    assert set(get_adapter("detectron2").divergences(torchvision_like)) == {
        "model.anchors.round_to_pixels",
        "input.resize_rounding",
        "model.roi_heads.mask_target",
    }
    assert get_adapter("reference").divergences(torchvision_like) == {}
    mmdet_like = cfg.with_overrides({"model.rpn.low_quality_min_iou": 0.3})
    assert set(get_adapter("detectron2").divergences(mmdet_like)) == {"model.rpn.low_quality_min_iou"}
    assert get_adapter("mmdet").divergences(mmdet_like) == {}
