"""The shared initialisation without weights: every norm layer's statistics calibrated on the run's own
training images, so the canonical FrozenBN (stem + res2 frozen) trains without ImageNet's statistics."""

import pytest
import torch
from mrcnn_bench.harness.config.schema import builtin_config_dir, load_config
from mrcnn_bench.harness.data.datasets import DataPaths
from mrcnn_bench.harness.run.init_weights import calibration_batch, initial_weights, make_initial_weights
from mrcnn_bench.reference_impl.config import ReferenceConfig
from mrcnn_bench.reference_impl.modeling import (
    MaskRCNN,
    calibrate_norm_statistics,
    norm_layers,
    to_torchvision_state_dict,
)

SMALL = builtin_config_dir() / "cpu_small.yaml"
SIZE = {
    "input.min_size_train": [160],
    "input.max_size_train": 192,
    "model.num_classes": 3,
    "model.backbone.calibration_images": 16,
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from mrcnn_bench.harness.data.datasets import make_synthetic

    root = tmp_path_factory.mktemp("calibration") / "synth"
    make_synthetic(root, images=24, size=192, seed=0)
    return DataPaths.from_root(root)


def _model(cfg):
    torch.manual_seed(cfg.benchmark.seed)
    return MaskRCNN.from_config(ReferenceConfig.from_canonical(cfg, 3))


def _activations(body, images: list[torch.Tensor]):
    """(per norm layer: the mean over channels of each channel's std, and the largest |channel mean|, over
    ``images``; per stage res2..res5: the std of its output), the network frozen as it trains."""
    outs = {}
    hooks = [
        m.register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, []).append(o.detach().clone()))
        for i, m in enumerate(norm_layers(body))
    ]  # cloned: the ReLU after a norm runs in place
    fold, training = body.fold_norm, body.training
    body.fold_frozen_bn(False).eval()  # folded, a norm layer is never called
    with torch.no_grad():
        stages = [body(x) for x in images]
    for h in hooks:
        h.remove()
    body.fold_frozen_bn(fold).train(training)
    layers = []
    for i in sorted(outs):
        x = torch.cat([o.transpose(0, 1).flatten(1) for o in outs[i]], 1)  # [C, pixels of every image]
        layers.append((x.std(1, correction=0).mean().item(), x.mean(1).abs().max().item()))
    stage_std = [torch.cat([s[k].flatten() for s in stages]).std().item() for k in range(4)]
    return layers, stage_std


@pytest.mark.e2e
def test_calibration_normalises_every_layer_on_its_images_and_on_others(paths):
    cfg = load_config(SMALL, SIZE)
    model = _model(cfg)
    body = model.backbone.body
    batch = calibration_batch(cfg, paths, model)
    assert batch.shape[:2] == (16, 3) and max(batch.shape[-2:]) <= 192
    pre = model.preprocess
    from mrcnn_bench.reference_impl.data.coco import COCOInstances

    dataset = COCOInstances(paths.train_json, paths.train_images, with_masks=False)
    held_out = [
        pre.resized(pre.normalized(dataset[i][0]), 160.0, 192.0)[None] for i in range(16, len(dataset))
    ]
    assert held_out, "the synthetic set leaves images out of the calibration"

    # identity statistics (what every framework's own initialisation has): the scale runs away with depth
    layers, stages = _activations(body, held_out)
    assert max(std for std, _ in layers) > 5 and max(stages) > 5

    assert (
        calibrate_norm_statistics(body, batch) == 53
    )  # every BN of ResNet-50: stem 1, 16 blocks x 3, 4 downsamples
    assert body.training and body.fold_norm  # left as it was found
    # on the calibration batch itself, exact: every channel of every norm layer's output mean 0, variance 1
    layers, _ = _activations(body, [batch])
    for i, (std, worst_mean) in enumerate(layers):
        assert worst_mean < 1e-4 and abs(std - 1) < 1e-3, (i, std, worst_mean)
    # on 8 images it never saw: every layer's output at unit scale within the spread of 16 images' statistics
    # (measured 0.91-1.14, the worst channel's mean 0.78; the stages' outputs, sums over residual blocks,
    # 1.2-1.7)
    layers, stages = _activations(body, held_out)
    for i, (std, worst_mean) in enumerate(layers):
        assert 0.75 < std < 1.33 and worst_mean < 1.5, (i, std, worst_mean)
    assert all(0.75 < s < 2.5 for s in stages), stages
    # folded into the convolutions (the reference's lever), the same function
    body.eval()
    with torch.no_grad():
        folded = body.fold_frozen_bn(True)(held_out[0])[-1]
        plain = body.fold_frozen_bn(False)(held_out[0])[-1]
    torch.testing.assert_close(folded, plain, rtol=1e-3, atol=2e-3)  # fp32 rounding over 53 layers
    with pytest.raises(ValueError, match="expected a batch"):
        calibrate_norm_statistics(body, torch.zeros(0, 3, 32, 32))


@pytest.mark.e2e
def test_the_shared_initialisation_carries_the_calibrated_statistics(paths, tmp_path):
    cfg = load_config(SMALL, SIZE)
    state = make_initial_weights(cfg, 3, paths)
    model = _model(cfg)
    calibrate_norm_statistics(model.backbone.body, calibration_batch(cfg, paths, model))
    expected = to_torchvision_state_dict(model.state_dict())
    for key in (
        "backbone.body.bn1.running_var",
        "backbone.body.layer1.0.bn1.running_mean",
        "backbone.body.layer4.2.bn3.running_var",
    ):
        assert torch.equal(state[key], expected[key]), key
        assert not torch.equal(
            state[key], torch.ones_like(state[key]) if "var" in key else torch.zeros_like(state[key])
        )
    # with weights (ImageNet's statistics) nothing is calibrated: the checkpoint's statistics stand
    assert not cfg.with_overrides({"model.weights": "/r50.pth"}).model.calibrates_norm
    # the cache is keyed by what the statistics depend on: the images read and how many
    a = initial_weights(cfg, 3, tmp_path, paths)
    assert initial_weights(cfg, 3, tmp_path, paths) == a
    assert (
        initial_weights(cfg.with_overrides({"model.backbone.calibration_images": 3}), 3, tmp_path, paths)[0]
        != a[0]
    )


def test_from_the_shared_initialisation_every_loss_starts_where_an_untrained_head_does(paths):
    """The heads initialised as the canonical config's framework does (detectron2, after Detectron): class
    scores from N(0, 0.01), box deltas from N(0, 0.001), mask logits from N(0, 0.001), the FCs with Caffe2's
    Xavier fill. So on the calibrated backbone the first step's mask loss is log 2 (every logit near 0) and
    the classifier's near log(classes + 1); He's fill on the mask logits (torchvision's and mmdet's) started
    the
    mask loss at 3 to 8 on cpu_eval, and its schedule diverged on it."""
    import math

    from mrcnn_bench.reference_impl.data.coco import COCOInstances
    from mrcnn_bench.reference_impl.modeling.mask_rcnn import load_torchvision_weights

    cfg = load_config(SMALL, SIZE)
    model = _model(cfg)
    heads = model.roi_heads
    for layer, std in (
        (heads.box_head.cls_score, 0.01),
        (heads.box_head.bbox_pred, 0.001),
        (heads.mask_head.predictor, 0.001),
    ):
        assert abs(float(layer.weight.detach().std()) / std - 1) < 0.1 and not layer.bias.any(), layer
    for fc in heads.box_head.fcs:  # kaiming_uniform(a=1): std 1 / sqrt(fan_in)
        assert (
            abs(float(fc.weight.detach().std()) * math.sqrt(fc.in_features) - 1) < 0.05 and not fc.bias.any()
        )
    load_torchvision_weights(model, make_initial_weights(cfg, 3, paths))
    data = COCOInstances(paths.train_json, paths.train_images, filter_empty=True, mask_format="polygon")
    items = [data[i] for i in range(2)]
    model.train()
    with torch.no_grad():
        losses = model(
            [im for im, _ in items],  # the set's 80 categories folded onto the model's 3
            [
                {"boxes": t["boxes"], "labels": t["labels"] % 3 + 1, "polygons": t["polygons"]}
                for _, t in items
            ],
        )
    assert abs(float(losses["loss_mask"]) - math.log(2)) < 0.05, losses
    # the class scores of near-zero weights on unnormalised box-head features: within twice log(classes + 1)
    assert float(losses["loss_classifier"]) < 2 * math.log(4) and float(losses["loss_box_reg"]) < 0.15, losses
