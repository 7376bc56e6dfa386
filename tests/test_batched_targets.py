"""Targets built for the whole batch on the device (``reference.batched_targets``) are the per-image
ones, value for value and draw for draw; and the host-sync counter that measures what they save
counts what it should."""

import pytest
import torch
from mrcnn_bench.reference_impl import ops
from mrcnn_bench.reference_impl.config import ReferenceConfig
from mrcnn_bench.reference_impl.modeling import MaskRCNN
from mrcnn_bench.reference_impl.structures import BalancedSampler, Matcher, pad_stack, pairwise_iou
from mrcnn_bench.reference_impl.syncs import HostSyncCounter, count_step_syncs, to_host
from test_reference_model import NUM_CLASSES, SIZE, _images, _targets


def _random_boxes(g, n, size=100.0):
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], 1)


def _count(fn, *device_tensors):
    with HostSyncCounter(*device_tensors) as c:
        fn()
    return c.total


# -------------------------------------------------------------------------------- the counter
def test_counter_sees_the_ops_that_make_the_host_wait():
    x, mask, idx = torch.randn(50), torch.rand(50) > 0.5, torch.tensor([1, 3])
    waits = {
        "x[mask]": lambda: x[mask],
        "x[mask] = 0": lambda: x.clone().__setitem__(mask, 0.0),
        "nonzero": lambda: torch.nonzero(mask),
        "where(mask)": lambda: torch.where(mask),
        "item": lambda: x.sum().item(),
        "float()": lambda: float(x.max()),
        "to_host": lambda: to_host(x[:3]),
        "nms": lambda: ops.nms(_random_boxes(torch.Generator().manual_seed(0), 20), x[:20], 0.5),
    }
    for name, fn in waits.items():
        assert _count(fn, x, mask) == 1, name
    free = {
        "where(mask, a, b)": lambda: torch.where(mask, x, 0.0),
        "masked_fill": lambda: x.masked_fill(mask, 0.0),
        "x[long index]": lambda: x[idx],
        "sum, max, sort": lambda: (x.sum(), x.max(), x.sort()),
        "a host tensor's item": lambda: torch.tensor([3]).item(),
    }
    for name, fn in free.items():
        assert _count(fn, x, mask) == 0, name
    # autocast's backward casts gradients back naming the device: on the CPU that must not look like a read
    linear = torch.nn.Linear(50, 4)

    def bf16_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x[None])
        out.float().sum().backward()

    assert _count(bf16_step, x, linear) == 0


def test_counter_follows_device_data_and_names_the_line():
    host = torch.tensor([2.0, 3.0])  # made outside the model: not device data
    with HostSyncCounter() as c:
        host.sum().item()
    assert c.total == 0
    device = torch.randn(4)
    with HostSyncCounter(device) as c:
        derived = (device * 2)[1:]  # derived from device data: device data
        derived.max().item()
    assert c.total == 1 and list(c.by_site) == [
        "(outside the reference implementation) (_local_scalar_dense)"
    ]


# ---------------------------------------------------------------------- the batched pieces
def test_batched_matcher_equals_matching_image_by_image():
    g = torch.Generator().manual_seed(1)
    anchors = _random_boxes(g, 300)
    gts = [
        _random_boxes(g, 5),
        _random_boxes(g, 2),
        torch.zeros((0, 4)),
        anchors[[7, 7, 40]].clone(),
    ]  # an empty image; tied gts
    for low_quality in (True, False):
        matcher = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
        padded, valid = pad_stack(gts)
        batched = matcher(torch.where(valid[..., None], pairwise_iou(padded, anchors), -1.0), valid)
        for i, gt in enumerate(gts):
            expected = (
                matcher(pairwise_iou(gt, anchors)) if len(gt) else torch.full((300,), Matcher.BELOW_LOW)
            )
            assert torch.equal(batched[i], expected), (i, low_quality)
    assert (batched[3] >= 0).sum() >= 2  # the exact copies matched


def test_batched_sampler_draws_what_the_per_image_sampler_draws():
    g = torch.Generator().manual_seed(2)
    sampler = BalancedSampler(64, 0.25)
    labels = [
        torch.randint(-1, 3, (400,), generator=g),
        torch.randint(-1, 1, (250,), generator=g),  # the second: no positives
        (torch.rand(300, generator=g) > 0.97).long(),
    ]  # few positives: more negatives fill in
    padded, _ = pad_stack(labels, value=-1)
    torch.manual_seed(9)
    pos_masks, neg_masks = sampler(labels)
    torch.manual_seed(9)
    batched = sampler.sample_batched(padded)
    for (pos, neg), pm, nm in zip(batched, pos_masks, neg_masks):
        assert torch.equal(pos, torch.where(pm)[0]) and torch.equal(neg, torch.where(nm)[0])
        assert len(pos) + len(neg) == 64
    assert len(batched[1][0]) == 0 and len(batched[2][0]) < 16


def test_batched_proposals_equal_the_per_image_ones():
    """Clip, small-box removal, NMS per level and top-k per image over the batch in one NMS call."""
    torch.manual_seed(0)
    rpns = [
        MaskRCNN.from_config(
            ReferenceConfig.like_torchvision(NUM_CLASSES, **SIZE, **{"perf.batched_targets": b})
        ).rpn
        for b in (True, False)
    ]
    g = torch.Generator().manual_seed(3)
    shapes = [(40, 64), (20, 32), (10, 16)]
    anchors = rpns[0].anchor_generator((160, 256), shapes, torch.device("cpu"), torch.float32)
    logits = [
        torch.randn(3, len(a), generator=g) * 20 for a in anchors
    ]  # x20: many scores saturate to 1.0 and tie
    deltas = [torch.randn(3, len(a), 4, generator=g) * 2 for a in anchors]
    deltas[0][1, :50, 2:] = -30  # collapsed boxes that the minimum size removes
    sizes = [(160, 256), (120, 200), (150, 90)]
    for training in (True, False):
        for rpn in rpns:
            rpn.train(training)
        batched, per_image = (rpn._proposals(anchors, logits, deltas, sizes) for rpn in rpns)
        assert len(batched) == 3
        for b, p in zip(batched, per_image):
            assert len(p) > 100 and torch.equal(b, p)


@pytest.mark.e2e
def test_batched_and_per_image_steps_equal_with_an_image_without_objects():
    torch.manual_seed(0)
    models = [
        MaskRCNN.from_config(
            ReferenceConfig.like_torchvision(NUM_CLASSES, **SIZE, **{"perf.batched_targets": b})
        ).train()
        for b in (True, False)
    ]
    models[1].load_state_dict(models[0].state_dict())
    empty = {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, 180, 140), dtype=torch.uint8),
    }
    for targets in ([_targets()[0], empty], [empty, empty]):
        losses = []
        for model in models:
            model.zero_grad()
            torch.manual_seed(5)
            out = model(_images(), targets)
            sum(out.values()).backward()
            losses.append(out)
        for k in losses[0]:
            assert torch.equal(losses[0][k], losses[1][k]), k
        for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
            assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad), name


# -------------------------------------------------------------------------- what it saves
@pytest.mark.e2e
@pytest.mark.parametrize("n_images", [2, 3])
def test_batched_targets_wait_for_the_device_four_times_a_step_whatever_the_batch(n_images):
    images, targets = (_images() * 2)[:n_images], (_targets() * 2)[:n_images]
    counts = {}
    for batched in (True, False):
        torch.manual_seed(0)
        model = MaskRCNN.from_config(
            ReferenceConfig.like_torchvision(NUM_CLASSES, **SIZE, **{"perf.batched_targets": batched})
        ).train()
        counts[batched] = count_step_syncs(model, images, targets)
    # batched: the NMS's kept count and the per-image counts after it; each sampler's counts (RPN, RoI)
    assert counts[True].total == 4, counts[True].by_site
    assert sorted(site.split(":")[0] for site in counts[True].by_site.elements()) == [
        "__init__.py",
        "boxes.py",
        "boxes.py",
        "rpn.py",
    ]
    # image by image: per image, the proposals' filter and NMS, two per sampler, the RoIs taken and their
    # positives
    assert counts[False].total == 8 * n_images + 2, counts[
        False
    ].by_site  # + the two reads of the RPN loss's samples
