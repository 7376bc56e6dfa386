"""Same work in every implementation: work counters, the learning-rate schedule each framework really
runs, shared initial weights and their converters, one data order, and the trajectory check."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from mrcnn_bench.adapters import get_adapter
from mrcnn_bench.adapters._common import WeightsMismatch, load_exact, schedule_facts
from mrcnn_bench.harness.config.schema import builtin_config_dir, load_config
from mrcnn_bench.harness.data.check import usable_images
from mrcnn_bench.harness.data.datasets import DataPaths
from mrcnn_bench.harness.data.order import global_batches, rank_batches
from mrcnn_bench.harness.engine.timing import IterationTimer, work_per_image
from mrcnn_bench.harness.parity.compare import canonical_lr, trajectory_frame
from mrcnn_bench.harness.records.results import atomic_write_json, atomic_write_jsonl, make_run_record

CANONICAL = builtin_config_dir() / "mask_rcnn_R_50_FPN_noaug_1x.yaml"
SMALL = builtin_config_dir() / "cpu_small.yaml"


def _installed(name):
    return get_adapter(name).available()[0]


FRAMEWORKS = [
    pytest.param(n, marks=pytest.mark.skipif(not _installed(n), reason=f"{n} is not installed"))
    for n in ("reference", "torchvision", "detectron2", "mmdet")
]


# ------------------------------------------------------------------------------- work counters
def test_work_counters_belong_to_the_iteration_they_were_counted_in():
    timer = IterationTimer(3, clock=iter(range(100)).__next__, memory=lambda: 0.0)
    timer.before_train()
    timer.count(proposals=1000, rois=512)
    timer.count(proposals=1000, rois=512, positives=30)  # a second forward (micro-batch) adds up
    first = timer.after_step(2)
    second = timer.after_step(2)  # nothing counted: no counters, not zeros
    timer.count(positives=7)
    third = timer.after_step(2)
    assert (first.proposals, first.rois, first.positives) == (2000, 1024, 30)
    assert "positives" not in second.to_dict() and third.positives == 7 and third.rois is None
    with pytest.raises(KeyError, match="unknown work counter 'masks'"):
        timer.count(masks=1)
    rows = [
        dict(
            iter=i,
            images=2,
            pixels=2 * 192 * 256,
            proposals=2000,
            rois=1024,
            positives=p,
            rpn_positives=4 * p,
        )
        for i, p in enumerate([10, 20, 30, 40])
    ]
    assert work_per_image(rows, 1, 4) == {
        "pixels_per_image": 192 * 256,
        "proposals_per_image": 1000.0,
        "rois_per_image": 512.0,
        "positives_per_image": 15.0,
        "rpn_positives_per_image": 60.0,
    }
    rows[2].pop("positives")
    assert work_per_image(rows, 1, 4)["positives_per_image"] is None


# ------------------------------------------------------------------------------ FLOPs of the window
@pytest.mark.parametrize("impl", ["reference", "torchvision", "detectron2", "mmdet"])
def test_every_adapter_reports_exactly_the_declared_hyperparameter_keys(impl):
    from mrcnn_bench.adapters.base import EFFECTIVE_HPARAM_KEYS

    adapter = get_adapter(impl)
    ok, why = adapter.available()
    if not ok:
        pytest.skip(why)
    reported = {
        k for k in adapter.effective_hparams(adapter.translate(load_config(SMALL))) if not k.startswith("_")
    }
    assert reported == EFFECTIVE_HPARAM_KEYS, (
        sorted(reported - EFFECTIVE_HPARAM_KEYS),
        sorted(EFFECTIVE_HPARAM_KEYS - reported),
    )


def test_unit_costs_of_a_syncbn_model_run_no_collective(monkeypatch):
    """Rank 0 alone counts the FLOPs after the window: a SyncBatchNorm in its model would wait for the
    other ranks' all-reduce forever. The count is made on plain batch norm, the same FLOPs."""
    from mrcnn_bench.harness.engine.flops import unit_costs
    from mrcnn_bench.reference_impl.modeling import MaskRCNN

    built = []
    original = MaskRCNN.from_config.__func__
    monkeypatch.setattr(
        MaskRCNN, "from_config", classmethod(lambda cls, c: built.append(original(cls, c)) or built[-1])
    )
    cfg = load_config(
        SMALL, {"model.backbone.norm": "SyncBN", "model.backbone.norm_without_weights": "SyncBN"}
    )
    assert cfg.model.effective_norm == "SyncBN"
    sync = unit_costs(cfg, 80, side=64, rois=4)
    (model,) = built
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SyncBatchNorm" not in kinds and "BatchNorm2d" in kinds
    plain = unit_costs(
        cfg.with_overrides({"model.backbone.norm": "BN", "model.backbone.norm_without_weights": "BN"}),
        80,
        side=64,
        rois=4,
    )
    assert sync == plain


def test_unit_costs_equal_torchvisions_modules_counted_the_same_way():
    """The reference's unit costs against torchvision's Mask R-CNN parts (an independent build of the
    same architecture), each counted by torch's FLOP counter over a forward and backward."""
    from mrcnn_bench.harness.engine.flops import training_step_flops, unit_costs

    cfg = load_config(SMALL)
    costs = unit_costs(cfg, 80, side=128, rois=8)
    tv = get_adapter("torchvision")
    model = tv.build_model(tv.translate(cfg)).train()
    image = torch.randn(1, 3, 128, 128)

    def trunk():
        features = list(model.backbone(image).values())
        logits, deltas = model.rpn.head(features)
        sum(t.sum() for t in (*features, *logits, *deltas)).backward()

    def head(modules, size):
        x = torch.randn(8, 256, size, size, requires_grad=True)
        for m in modules[:-1]:
            x = m(x)
        out = modules[-1](x)
        sum(t.sum() for t in (out if isinstance(out, tuple) else (out,))).backward()

    roi = model.roi_heads
    assert costs.per_pixel == pytest.approx(training_step_flops(trunk) / 128**2, rel=1e-9)
    assert costs.per_roi == pytest.approx(
        training_step_flops(lambda: head([roi.box_head, roi.box_predictor], 7)) / 8, rel=1e-9
    )
    assert costs.per_positive == pytest.approx(
        training_step_flops(lambda: head([roi.mask_head, roi.mask_predictor], 14)) / 8, rel=1e-9
    )
    # the mask head: 4 convs 3x3 256->256 at 14x14, a 2x2 deconv to 28x28 and the class predictor, x3 for
    # backward
    macs = 4 * 14 * 14 * 256 * 256 * 9 + 14 * 14 * 256 * 256 * 4 + 28 * 28 * 256 * 80
    assert costs.per_positive == pytest.approx(3 * 2 * macs, rel=0.02)


def test_each_phases_forward_flops_equal_torchvisions_parts():
    """The per-phase forward FLOPs (the phases table's MFU) against torchvision's backbone body, FPN,
    RPN head, box and mask heads counted alike; the backward is what training adds to the forwards."""
    from mrcnn_bench.harness.engine.flops import (
        UnitCosts,
        training_step_flops,
        unit_costs,
        window_phase_flops,
    )

    cfg = load_config(SMALL)
    costs = unit_costs(cfg, 80, side=128, rois=8)
    tv = get_adapter("torchvision")
    model = tv.build_model(tv.translate(cfg)).train()
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        body = model.backbone.body(image)
        pyramid = list(model.backbone.fpn(body).values())
        box_x, mask_x = torch.randn(8, 256, 7, 7), torch.randn(8, 256, 14, 14)
        roi = model.roi_heads
        want = {
            "backbone": training_step_flops(lambda: model.backbone.body(image)) / 128**2,
            "fpn": training_step_flops(lambda: model.backbone.fpn(body)) / 128**2,
            "rpn head": training_step_flops(lambda: model.rpn.head(pyramid)) / 128**2,
            "box head": training_step_flops(lambda: roi.box_predictor(roi.box_head(box_x))) / 8,
            "mask head": training_step_flops(lambda: roi.mask_predictor(roi.mask_head(mask_x))) / 8,
        }
    assert costs.forward == pytest.approx(want, rel=1e-9)
    # ResNet-50 to res5 at 128 x 128: 4.1 GMACs at 224 x 224, scaled by the pixels (no classifier)
    assert costs.forward["backbone"] * 128**2 == pytest.approx(2 * 4.09e9 * (128 / 224) ** 2, rel=0.03)
    rows = [dict(iter=i, images=2, pixels=1000 * (i + 1), rois=512, positives=30 + i) for i in range(4)]
    flops = window_phase_flops(costs, rows, 1, 4)
    assert flops["backbone"] == pytest.approx(costs.forward["backbone"] * 3000)
    assert flops["mask head"] == pytest.approx(costs.forward["mask head"] * 32)
    assert flops["total"] == pytest.approx(costs.of(3000, 512, 32))
    assert sum(v for k, v in flops.items() if k != "total") == pytest.approx(flops["total"])
    assert (
        flops["backward"] > flops["total"] / 2
    )  # frozen stem and res2: less than twice the forward, more than it
    assert (
        window_phase_flops(UnitCosts(1.0, 2.0, 3.0), rows, 1, 4) is None
    )  # a cost file from before the phases


def test_unit_costs_are_counted_once_per_model_and_kept(tmp_path, monkeypatch):
    from mrcnn_bench.harness.engine import flops

    monkeypatch.setenv("MRCNN_BENCH_FLOPS", str(tmp_path))
    calls = []
    monkeypatch.setattr(
        flops, "unit_costs", lambda cfg, n: calls.append(n) or flops.UnitCosts(1.0, 2.0, 3.0 * n)
    )
    cfg = load_config(SMALL)
    assert flops.cached_unit_costs(cfg, 80) == flops.UnitCosts(1.0, 2.0, 240.0)
    assert flops.cached_unit_costs(cfg, 80) == flops.UnitCosts(1.0, 2.0, 240.0) and calls == [
        80
    ]  # from the file
    assert flops.cached_unit_costs(cfg, 7).per_positive == 21.0 and calls == [80, 7]  # other classes: counted
    other = cfg.with_overrides({"model.roi_heads.mask_head_num_conv": 2})
    flops.cached_unit_costs(other, 80)
    assert calls == [80, 7, 80] and len(list(tmp_path.glob("*.json"))) == 3
    (next(tmp_path.glob("*.json"))).write_text("{corrupt")  # a damaged file is counted again, not trusted
    for c, n in ((cfg, 80), (cfg, 7), (other, 80)):
        flops.cached_unit_costs(c, n)
    assert len(calls) == 4


def test_window_flops_come_from_the_recorded_work():
    from mrcnn_bench.harness.engine.flops import UnitCosts, window_flops_per_image

    costs = UnitCosts(per_pixel=1e6, per_roi=1e8, per_positive=3e9)
    rows = [
        dict(iter=i, images=2, pixels=2 * 100, rois=1024, positives=p) for i, p in enumerate([99, 10, 30])
    ]
    assert window_flops_per_image(costs, rows, 1, 3) == pytest.approx((2 * (200e6 + 1024e8) + 40 * 3e9) / 4)
    rows[1].pop("pixels")
    assert window_flops_per_image(costs, rows, 1, 3) is None


# ---------------------------------------------------------------------------- the same function
@pytest.mark.e2e
def test_forward_check_computes_the_same_function(synth_root):
    """From the shared weights, every installed implementation's FPN features and RPN outputs on one batch
    equal the reference's; an implementation with other weights would not."""
    out = run_cli("parity", "--check-forward", "--config", "cpu_small", "--data", synth_root, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    table = [
        line
        for line in out.stdout.splitlines()
        if line.startswith("| p2 ") or line.startswith("| deltas.p6 ")
    ]
    assert len(table) == 2 and "torchvision" in out.stdout, out.stdout
    assert "✗" not in out.stdout


def test_forward_frame_names_a_divergence():
    from mrcnn_bench.harness.parity.compare import forward_frame

    ref = {"p2": torch.ones(1, 4, 2, 2), "objectness.p2": torch.arange(12.0).view(1, 3, 2, 2)}
    same = {k: v.clone() for k, v in ref.items()}
    swapped = dict(same, **{"objectness.p2": ref["objectness.p2"][:, [1, 0, 2]]})  # anchors in another order
    table, problems = forward_frame(
        {"reference": ref, "a": same, "b": swapped, "c": {"p2": torch.ones(1, 4, 2, 3)}}
    )
    assert list(table["a"]) == ["0.0e+00", "0.0e+00"]
    assert problems == [
        "c: p2 has shape (1, 4, 2, 3), reference's (1, 4, 2, 2)",
        "b: objectness.p2 differs from reference's by 3.64e-01 of its largest value (tolerance 0.0005)",
        "c: objectness.p2 has shape None, reference's (1, 3, 2, 2)",
    ]


# ------------------------------------------------------------------ the schedule each one runs
def test_schedule_facts_read_warmup_and_steps_from_a_trajectory():
    solver = dict(base_lr=0.02, warmup_iters=10, warmup_factor=0.001, steps=[30, 40], gamma=0.1)
    lrs = [canonical_lr(solver, i) for i in range(45)]
    assert schedule_facts(lrs, 0.02) == {
        "solver.warmup_iters": 10,
        "solver.warmup_factor": 0.001,
        "solver.steps": [30, 40],
        "solver.gamma": 0.1,
    }
    # a warm-up that never ends within the trajectory (detectron2's, stretched over MAX_ITER=iters) is no
    # warm-up of 10
    stretched = [canonical_lr(dict(solver, warmup_iters=100), i) for i in range(45)]
    assert schedule_facts(stretched, 0.02)["solver.warmup_iters"] is None


@pytest.mark.parametrize("impl", FRAMEWORKS)
def test_each_framework_runs_the_canonical_schedule(impl):
    """The learning rate of the first iterations, from the scheduler each framework's trainer builds,
    equals the canonical schedule (the one ``parity --run`` holds recorded runs to)."""
    cfg = load_config(SMALL, {"model.num_classes": 3, "solver.warmup_iters": 20, "solver.steps": [25, 28]})
    adapter = get_adapter(impl)
    lrs = adapter.lr_trajectory(adapter.translate(cfg), 30)
    want = [canonical_lr(cfg.solver.model_dump(), i) for i in range(30)]
    assert lrs == pytest.approx(want, rel=1e-9)


@pytest.mark.skipif(not _installed("detectron2"), reason="detectron2 is not installed")
def test_parity_table_catches_detectron2_warmup_capped_at_max_iter():
    """detectron2 places warm-up at min(WARMUP_ITERS / MAX_ITER, 1) of the schedule: with MAX_ITER set
    to the run's 30 iterations its warm-up never reaches the base lr; the table must say so."""
    from mrcnn_bench.harness.parity.compare import canonical_values, parity_frame

    cfg = load_config(SMALL, {"model.num_classes": 3})
    adapter = get_adapter("detectron2")
    native = adapter.translate(cfg)
    assert native.SOLVER.MAX_ITER == 90000  # the canonical schedule; the run stops at benchmark.iters
    native.defrost()
    native.SOLVER.MAX_ITER = 30  # the schedule cut to the run's length
    eff = adapter.effective_hparams(native)
    assert eff["solver.warmup_iters"] is None and eff["solver.steps"] == []
    _, notes = parity_frame(canonical_values(cfg, 3), {"detectron2": eff})
    assert any(n.startswith("detectron2: solver.warmup_iters = None") for n in notes), notes


# ------------------------------------------------------------------------- shared initial weights
def _tv_state(num_classes=3, seed=0):
    adapter = get_adapter("torchvision")
    cfg = load_config(SMALL, {"model.num_classes": num_classes})
    torch.manual_seed(seed)
    return adapter.build_model(adapter.translate(cfg)).state_dict()


@pytest.mark.parametrize("impl", [p for p in FRAMEWORKS if p.values[0] in ("detectron2", "mmdet")])
def test_converters_map_every_parameter_both_ways(impl):
    """torchvision's layout -> the framework's model (loaded exactly: every name and shape) -> back:
    equal, except the background slots torchvision has and the framework lacks (zeros, never read)."""
    import importlib

    module = importlib.import_module(f"mrcnn_bench.adapters.{impl}")
    cfg = load_config(SMALL, {"model.num_classes": 3})
    model = _framework_model(impl, cfg)
    tv = _tv_state()
    converted = module.from_torchvision(tv)
    load_exact(model, converted, "test")
    back = module.to_torchvision(model.state_dict())
    tv = {k: v for k, v in tv.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(tv)
    slots = {
        "roi_heads.box_predictor.bbox_pred.weight": 4,
        "roi_heads.box_predictor.bbox_pred.bias": 4,
        "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
        "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
    }
    for key, value in tv.items():
        skip = slots.get(key, 0)
        assert torch.equal(back[key][skip:], value[skip:]), key
        assert not back[key][:skip].any(), key
    # the framework's class order: background last in the classifier
    cls = converted[
        "roi_heads.box_predictor.cls_score.weight"
        if impl == "detectron2"
        else "roi_head.bbox_head.fc_cls.weight"
    ]
    assert torch.equal(cls[-1], tv["roi_heads.box_predictor.cls_score.weight"][0])
    # and back from the framework's own random weights: exact both ways
    again = module.from_torchvision(module.to_torchvision(model.state_dict()))
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(again) == set(own) and all(torch.equal(again[k], own[k]) for k in own)


def _framework_model(impl, cfg):
    adapter = get_adapter(impl)
    native = adapter.translate(cfg)
    if impl == "detectron2":
        from mrcnn_bench.adapters.detectron2 import _apply_shims

        _apply_shims("cpu")
        from detectron2.modeling import build_model

        return build_model(native)
    from mrcnn_bench.adapters._common import pillow_linear_alias

    pillow_linear_alias()
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS.build(native.model)


def test_reference_exports_what_torchvision_loads():
    from mrcnn_bench.reference_impl.config import ReferenceConfig
    from mrcnn_bench.reference_impl.modeling import (
        MaskRCNN,
        load_torchvision_weights,
        to_torchvision_state_dict,
    )

    cfg = load_config(SMALL, {"model.num_classes": 3})
    ours = MaskRCNN.from_config(ReferenceConfig.from_canonical(cfg, 3))
    exported = to_torchvision_state_dict(ours.state_dict())
    tv = get_adapter("torchvision")
    model = tv.build_model(tv.translate(cfg))
    load_exact(model, exported, "reference export")
    again = MaskRCNN.from_config(ReferenceConfig.from_canonical(cfg, 3))
    load_torchvision_weights(again, model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values()))


def test_a_mismatching_checkpoint_names_the_first_bad_parameter(tmp_path):
    from mrcnn_bench.harness.run.init_weights import (
        WeightsError,
        initial_weights,
        make_initial_weights,
        overlay,
    )

    cfg = load_config(SMALL, {"model.num_classes": 3})
    tv = get_adapter("torchvision")
    model = tv.build_model(tv.translate(cfg))
    state = make_initial_weights(cfg, 3)
    wrong = dict(state, **{"rpn.head.cls_logits.weight": torch.zeros(5, 256, 1, 1)})
    with pytest.raises(
        WeightsMismatch,
        match=r"'rpn.head.cls_logits.weight' has shape \(5, 256, 1, 1\), the model's is \(3, 256, 1, 1\)",
    ):
        load_exact(model, wrong, "ckpt")
    with pytest.raises(WeightsMismatch, match="'backbone.fpn.extra.weight' is not a parameter"):
        load_exact(model, dict(state, **{"backbone.fpn.extra.weight": torch.zeros(1)}), "ckpt")
    partial = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_predictor")}
    with pytest.raises(
        WeightsMismatch, match="no value for the model's 'roi_heads.mask_predictor.conv5_mask.weight'"
    ):
        load_exact(model, partial, "ckpt")
    # an ImageNet R-50 (torchvision's resnet50 names, fc included) lays over the backbone only
    resnet = {
        k.removeprefix("backbone.body."): torch.full_like(v, 0.5)
        for k, v in state.items()
        if k.startswith("backbone.body.")
    }
    resnet["fc.weight"] = torch.zeros(1000, 2048)
    laid = overlay(state, resnet, "r50.pth")
    assert torch.equal(laid["backbone.body.layer3.2.conv2.weight"], resnet["layer3.2.conv2.weight"])
    assert torch.equal(laid["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.weight"])
    with pytest.raises(WeightsError, match="r50.pth: 'layer9.weight' is not a parameter"):
        overlay(state, {"layer9.weight": torch.zeros(1)}, "r50.pth")
    # one seeded initialisation: the same bytes on every call, another for another seed
    a = initial_weights(cfg, 3, tmp_path)
    assert initial_weights(cfg, 3, tmp_path) == a
    assert initial_weights(cfg.with_overrides({"benchmark.seed": 1}), 3, tmp_path)[1] != a[1]


@pytest.mark.parametrize("impl", FRAMEWORKS)
def test_every_framework_starts_from_the_shared_weights(impl, tmp_path):
    """What each adapter loads from model.init_weights, read back in torchvision's layout, is the file."""
    from mrcnn_bench.harness.run.init_weights import initial_weights

    cfg = load_config(SMALL, {"model.num_classes": 3})
    path, _ = initial_weights(cfg, 3, tmp_path)
    cfg = cfg.with_overrides({"model.init_weights": str(path)})
    shared = torch.load(path, weights_only=True)
    adapter = get_adapter(impl)
    if impl == "reference":
        from mrcnn_bench.reference_impl.modeling import to_torchvision_state_dict

        loaded = to_torchvision_state_dict(adapter.build_model(adapter.translate(cfg)).state_dict())
    elif impl == "torchvision":
        loaded = adapter.build_model(adapter.translate(cfg)).state_dict()
    else:
        import importlib

        from mrcnn_bench.adapters._common import load_initial_weights

        module = importlib.import_module(f"mrcnn_bench.adapters.{impl}")
        model = _framework_model(impl, cfg)
        load_exact(
            model, module.from_torchvision(load_initial_weights(str(path))), str(path)
        )  # what train() does
        loaded = module.to_torchvision(model.state_dict())
        for key in (
            "roi_heads.box_predictor.bbox_pred.weight",
            "roi_heads.box_predictor.bbox_pred.bias",
            "roi_heads.mask_predictor.mask_fcn_logits.weight",
            "roi_heads.mask_predictor.mask_fcn_logits.bias",
        ):
            shared[key] = shared[key].clone()
            shared[key][: 4 if "bbox" in key else 1] = 0  # background slots the framework has no place for
    for key, value in shared.items():
        assert torch.equal(loaded[key], value), key


# ------------------------------------------------------------------------------- one data order
def _coco(tmp_path, sizes, crowd_only=()):
    images = [
        {"id": i + 1, "file_name": f"{i}.jpg", "width": w, "height": h} for i, (w, h) in enumerate(sizes)
    ]
    anns = [
        {
            "id": i + 1,
            "image_id": i + 1,
            "category_id": 1,
            "bbox": [1, 1, 5, 5],
            "area": 25,
            "segmentation": [],
            "iscrowd": int(i + 1 in crowd_only),
        }
        for i in range(len(sizes))
    ]
    path = tmp_path / "train.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    return path


def test_data_order_groups_by_orientation_shares_batches_and_never_restarts(tmp_path):
    sizes = [
        (640, 480),
        (480, 640),
        (640, 427),
        (20, 200),
        (500, 500),
        (640, 480),
        (427, 640),
        (640, 360),
        (300, 400),
    ]
    path = _coco(tmp_path, sizes, crowd_only={9})
    usable = usable_images(json.loads(path.read_text()))
    assert sorted(usable) == [1, 2, 3, 5, 6, 7, 8]  # image 4: a side under 32 px; image 9: only a crowd
    landscape = {i for i, wide in usable.items() if wide}
    batches = list(zip(range(40), global_batches(path, batch=2, seed=0, group_by_aspect=True)))
    assert all(set(b) <= landscape or not set(b) & landscape for _, b in batches)  # one orientation per batch
    ungrouped = [b for _, b in zip(range(40), global_batches(path, batch=2, seed=0, group_by_aspect=False))]
    assert any(bool(set(b) & landscape) and not set(b) <= landscape for b in ungrouped)
    # an endless stream of whole permutations: after k passes every image was drawn k times
    stream = [i for b in ungrouped[:14] for i in b]  # 28 draws = 4 passes over 7 images
    assert sorted(np.bincount(stream)[1:].tolist()) == [0, 4, 4, 4, 4, 4, 4, 4]
    # the same order for the same seed, another for another
    again = [b for _, b in zip(range(40), global_batches(path, batch=2, seed=0, group_by_aspect=False))]
    other = [b for _, b in zip(range(40), global_batches(path, batch=2, seed=1, group_by_aspect=False))]
    assert again == ungrouped and other != ungrouped
    # process r of W takes its places in every global batch
    spec = dict(per_process=2, seed=0, group_by_aspect=True)
    glob = [b for _, b in zip(range(5), global_batches(path, batch=4, seed=0, group_by_aspect=True))]
    shares = [[b for _, b in zip(range(5), rank_batches(path, rank=r, world_size=2, **spec))] for r in (0, 1)]
    assert [a + b for a, b in zip(*shares)] == glob


def _first_batches_ids(impl, cfg, data, n=4):
    """Image ids of the first ``n`` batches each framework's own loader yields in a run."""
    from mrcnn_bench.adapters.base import DistInfo

    adapter, dist = get_adapter(impl), DistInfo()
    if impl == "torchvision":
        loader = adapter.build_loader(adapter.translate(cfg, data), dist)
        return [[int(t["image_id"]) for t in targets] for _, (_, targets) in zip(range(n), loader)]
    if impl == "reference":
        _, trainer = adapter.build_trainer(cfg, data, dist)
        return [[t["image_id"] for t in trainer.next_batch()[1]] for _ in range(n)]
    raise ValueError(impl)


@pytest.mark.parametrize("impl", ["reference", "torchvision"])
def test_loaders_follow_the_run_order(impl, synth_root):
    cfg = load_config(SMALL, {"benchmark.num_workers": 0})
    data = DataPaths.from_root(synth_root)
    want = [
        b for _, b in zip(range(4), global_batches(data.train_json, batch=2, seed=0, group_by_aspect=True))
    ]
    assert _first_batches_ids(impl, cfg, data) == want


@pytest.mark.skipif(not _installed("detectron2"), reason="detectron2 is not installed")
def test_detectron2_loader_follows_the_run_order(synth_root):
    from mrcnn_bench.adapters._common import data_spec, ordered_batches
    from mrcnn_bench.adapters.base import DistInfo
    from mrcnn_bench.adapters.detectron2 import _apply_shims, _register_train_set

    cfg = load_config(SMALL, {"benchmark.num_workers": 0})
    data = DataPaths.from_root(synth_root)
    native = get_adapter("detectron2").translate(cfg, data)
    _apply_shims("cpu")
    from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

    _register_train_set(native)  # this split, whatever another test of this process registered before
    dicts = get_detection_dataset_dicts(native.DATASETS.TRAIN, filter_empty=True)
    sampler = ordered_batches(
        dict(train_json=str(data.train_json), order=dict(native.MRCNN_BENCH.ORDER)),
        DistInfo(),
        [d["image_id"] for d in dicts],
        "detectron2",
        flat=True,
    )
    loader = build_detection_train_loader(native, dataset=dicts, sampler=sampler)
    got = [[d["image_id"] for d in batch] for _, batch in zip(range(4), loader)]
    want = [
        b for _, b in zip(range(4), global_batches(data.train_json, batch=2, seed=0, group_by_aspect=True))
    ]
    assert got == want and data_spec(cfg, data)["order"] == dict(native.MRCNN_BENCH.ORDER)


@pytest.mark.skipif(not _installed("mmdet"), reason="mmdet is not installed")
def test_mmdet_sampler_follows_the_run_order(synth_root):
    """The sampler the mmdet config names, over mmdet's own CocoDataset, yields the order's images in its
    batches (mmengine batches a sampler's indices in turn: no batch sampler of its own)."""
    from mrcnn_bench.adapters._common import pillow_linear_alias
    from mrcnn_bench.adapters.mmdet import ORDER_SAMPLER, _ordered_sampler

    cfg = load_config(SMALL, {"benchmark.num_workers": 0})
    data = DataPaths.from_root(synth_root)
    native = get_adapter("mmdet").translate(cfg, data)
    loader = native.train_dataloader
    assert loader.sampler.type == ORDER_SAMPLER and loader.batch_sampler is None
    pillow_linear_alias()
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    register_all_modules()
    dataset = DATASETS.build(loader.dataset)
    sampler = _ordered_sampler(dataset, 0, **{k: v for k, v in loader.sampler.items() if k != "type"})
    indices = [i for _, i in zip(range(8), sampler)]
    got = [[dataset.get_data_info(i)["img_id"] for i in indices[k : k + 2]] for k in range(0, 8, 2)]
    want = [
        b for _, b in zip(range(4), global_batches(data.train_json, batch=2, seed=0, group_by_aspect=True))
    ]
    assert got == want


# ---------------------------------------------------------------------------- trajectory parity
def _record(root: Path, impl, lrs, positives, images=2, status="ok", pixels=None):
    solver = dict(base_lr=0.02, warmup_iters=100, warmup_factor=0.001, steps=[60000], gamma=0.1)
    config = {
        "name": "fixture",
        "solver": dict(solver, ims_per_batch=2),
        "benchmark": {"warmup": 2, "iters": len(lrs)},
    }
    rows = [
        dict(
            iter=i,
            end_time=float(i + 1),
            duration=1.0,
            images=2,
            global_images=images,
            lr=lr,
            proposals=2000,
            rois=1024,
            positives=p,
            pixels=px,
        )
        for i, (lr, p, px) in enumerate(zip(lrs, positives, pixels or [98304] * len(lrs)))
    ]
    d = root / "run" / impl
    atomic_write_jsonl(d / "iterations.jsonl", rows)
    summary = (
        dict(
            warmup=2,
            end=len(lrs),
            iterations=len(lrs) - 2,
            images=2 * (len(lrs) - 2),
            seconds=len(lrs) - 2.0,
            images_per_s=2.0,
            s_per_iter_median=1.0,
        )
        if status == "ok"
        else None
    )
    atomic_write_json(
        d / "run.json",
        make_run_record(
            impl=impl,
            run_id="run",
            status=status,
            reason=None if status == "ok" else "boom",
            config=config,
            world_size=1,
            device="cpu",
            dtype="fp32",
            window={"warmup": 2, "end": len(lrs), "iters": len(lrs)},
            iterations_recorded=len(rows),
            summary=summary,
        ),
    )
    return solver


@pytest.mark.e2e
def test_trajectory_parity_passes_the_same_work_and_names_each_divergence(tmp_path):
    solver = dict(base_lr=0.02, warmup_iters=100, warmup_factor=0.001, steps=[60000], gamma=0.1)
    good = [canonical_lr(solver, i) for i in range(8)]
    _record(tmp_path, "a", good, [40] * 8)
    _record(tmp_path, "b", good, [44] * 8)
    ok = run_cli("parity", "--run", tmp_path / "run")
    assert ok.returncode == 0 and "no divergence" in ok.stdout, ok.stdout + ok.stderr
    assert "| 20.0 " in ok.stdout and "| 22.0 " in ok.stdout  # positives per image over the window
    # detectron2's old schedule: warm-up stretched over the run, so the lr is too high from iteration 1
    _record(tmp_path, "c", [canonical_lr(dict(solver, warmup_iters=8), i) for i in range(8)], [42] * 8)
    _record(tmp_path, "d", good, [80] * 8, images=1)
    bad = run_cli("parity", "--run", tmp_path / "run")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "c: lr 0.0025175 at iteration 1, canonical 0.0002198" in bad.stdout
    assert "d: global batch is not 2 at iteration(s) [0, 1, 2, 3, 4]" in bad.stdout
    assert "d: 40.0 positives per image, +86.0% from the median 21.5 (band ±25%)" in bad.stdout
    # a wider band lets the work through, not the schedule
    wide = run_cli("parity", "--run", tmp_path / "run", "--band", "1.0")
    assert wide.returncode == 1 and "positives per image" not in wide.stdout


@pytest.mark.e2e
def test_trajectory_parity_names_an_implementation_that_padded_more_pixels(tmp_path):
    """Rounding the scaled side where the others floor it: 128x85 -> 193 px wide, padded to 224 not 192."""
    solver = dict(base_lr=0.02, warmup_iters=100, warmup_factor=0.001, steps=[60000], gamma=0.1)
    good = [canonical_lr(solver, i) for i in range(8)]
    floored = [2 * 128 * 192] * 8
    rounded = [2 * 128 * (224 if i % 2 else 192) for i in range(8)]  # every other batch holds a 2:3 image
    for impl, pixels in (("a", floored), ("b", floored), ("c", rounded), ("d", rounded)):
        _record(tmp_path, impl, good, [40] * 8, pixels=pixels)
    out = run_cli("parity", "--run", tmp_path / "run")
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        "| 24576.0 " in out.stdout and "| 26624.0 " in out.stdout
    )  # padded pixels per image over the window [2, 8)
    problems = [line for line in out.stdout.splitlines() if line.startswith("- ")]
    assert problems == [
        f"- {impl}: 26624.0 padded pixels per image, +8.3% from the lower median 24576.0 (tolerance ±0.5%: "
        "the same images at the same sizes pad alike)"
        for impl in ("c", "d")
    ], out.stdout
    _record(tmp_path, "c", good, [40] * 8, pixels=floored)
    _record(tmp_path, "d", good, [40] * 8, pixels=floored)
    assert run_cli("parity", "--run", tmp_path / "run").returncode == 0


@pytest.mark.e2e
def test_trajectory_parity_reports_a_failed_implementation(tmp_path):
    solver = _record(tmp_path, "a", [1e-5] * 4, [10] * 4)
    _record(tmp_path, "b", [1e-5] * 4, [10] * 4, status="failed")
    from mrcnn_bench.harness.report.tables import load_runs

    table, problems = trajectory_frame(load_runs([tmp_path / "run"]))
    assert "b: failed: boom (nothing to compare)" in problems
    assert list(table["Implementation"]) == ["a", "b"] and solver["base_lr"] == 0.02
    missing = run_cli("parity", "--run", tmp_path / "nothing-here")
    assert missing.returncode == 2 and "nothing-here: no such file or folder" in missing.stderr


@pytest.mark.e2e
def test_the_four_do_the_same_work_from_the_first_iteration(tmp_path):
    """cpu_small with flipping off, the images at their stored size (max_size_train 192: every image's
    long side, so the resize is the identity): at iteration 0 the RPN's sampled positive anchors and
    the positive RoIs of every installed implementation within 5% of their median; then the recorded
    trajectories pass ``parity --run``. (At cpu_small's own 192-px short side the images are upscaled,
    and detectron2 and mmdet interpolate uint8 pixels where the reference and torchvision interpolate
    floats: the RPN positives stay equal, the RoI positives do not; docs/methodology.md, "Same work".)"""
    out = run_cli(
        "run",
        "--impl",
        "all",
        "--config",
        "cpu_small",
        "--out",
        tmp_path,
        "--run-id",
        "w",
        "--set",
        "input.horizontal_flip_prob=0.0",
        "--set",
        "input.max_size_train=192",
        "--set",
        "benchmark.iters=2",
        "--set",
        "benchmark.warmup=1",
        "--set",
        "benchmark.window_end=2",
        "--set",
        "benchmark.num_workers=0",
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (
        "initial weights: one seeded initialisation for every implementation (80 classes, seed 0, norm "
        "statistics calibrated "
        "on 8 training images)"
    ) in out.stderr
    impls = sorted(p.name for p in (tmp_path / "w").iterdir() if (p / "run.json").is_file())
    assert {"reference", "torchvision"} <= set(impls)
    runs = {i: json.loads((tmp_path / "w" / i / "run.json").read_text()) for i in impls}
    first = {
        i: json.loads((tmp_path / "w" / i / "iterations.jsonl").read_text().splitlines()[0]) for i in impls
    }
    for counter in ("rpn_positives", "positives", "rois", "pixels"):
        values = {i: first[i][counter] for i in impls}
        median = sorted(values.values())[len(values) // 2]
        assert all(abs(v / median - 1) <= 0.05 for v in values.values()), (counter, values)
    assert first["reference"]["rpn_positives"] > 50  # the rule under test has work to do
    assert len({r["config"]["model"]["init_weights"] for r in runs.values()}) == 1
    # torchvision's own rules, allowed by the config and recorded; the others run the canonical ones
    assert set(runs["torchvision"]["divergent"]) == set(
        runs["torchvision"]["config"]["benchmark"]["allow_divergent"]
    )
    assert all(runs[i]["divergent"] == {} for i in impls if i != "torchvision")
    assert all(
        r["summary"]["flops_per_image"] > 1e9 and r["summary"]["rpn_positives_per_image"] > 0
        for r in runs.values()
    )
    check = run_cli("parity", "--run", tmp_path / "w")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "RPN positives/img at iteration 0" in check.stdout
