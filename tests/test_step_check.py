"""parity --check-step: one training step of every implementation on the same batch, compared with the
reference's term by term (harness/parity/step_check.py, harness/tasks/step.py)."""

import pytest
import torch
from conftest import run_cli
from mrcnn_bench.harness.parity.step_check import LOSSES, MODULES, compare_steps, excused, floor_distances
from mrcnn_bench.harness.tasks.step import StepCapture, canonical_losses


def _step(scale=1.0, box_head=1.0, lr=0.01, wd=1e-4, loss=None):
    """A step record as step.pt holds it: the five losses, a gradient per module (one frozen stem)."""
    g = torch.Generator().manual_seed(0)
    grads = {
        f"{prefixes[0]}weight": torch.randn(8, 4, generator=g) * scale
        for m, prefixes in MODULES.items()
        if m != "stem"
    }
    grads["roi_heads.box_head.weight"] = grads["roi_heads.box_head.weight"] * box_head
    losses = dict(zip(LOSSES, [0.7, 0.4, 4.3, 0.03, 3.0]), **(loss or {}))
    return {
        "losses": losses,
        "raw_losses": {},
        "grads": grads,
        "frozen": ["backbone.body.conv1.weight"],
        "groups": {n: (lr, wd, 0.9) for n in grads},
        "update_error": 0.0,
    }


def test_the_comparison_finds_what_differs_and_excuses_only_what_is_declared():
    ref = _step()
    floor = floor_distances(ref, _step(scale=1.0 + 1e-3))  # rounding moved every gradient by 1e-3 of itself
    assert floor["res3"] == pytest.approx(1e-3, rel=1e-3) and floor["rpn_cls"] == 0
    steps = {
        "reference": ref,
        "same": _step(scale=1.0 + 2e-3),
        "box": _step(box_head=1.1),
        "mask": _step(loss={"mask": 3.1}),
        "decay": _step(wd=0.0),
        "declared": _step(box_head=1.1, loss={"roi_box": 0.05}),
    }
    work = {n: {"rpn_positives": 136, "proposals": 2000, "rois": 2010, "positives": 17} for n in steps}
    work["declared"] = dict(work["declared"], positives=15)
    losses, grads, problems, notes = compare_steps(
        steps, work, "reference", {"declared": {"model.roi_heads.smooth_l1_beta"}}, floor
    )
    text = "\n".join(problems)
    assert "same:" not in text  # within FLOOR_FACTOR x the floor
    assert "box: box head gradients 1.0e-01" in text and "tolerance 3.0e-03" in text
    assert "mask: mask loss 3.1, reference's 3 (3.3e-02 apart" in text
    assert (
        "decay: the optimizer treats 8 parameter(s) otherwise" in text
        and "(0.01, 0.0, 0.9), reference's (0.01, 0.0001, 0.9)" in text
    )
    # a declared key excuses the terms and modules it reaches, and no others
    assert "declared:" not in text
    assert "(declared)" in grads.loc[grads["module"] == "box head", "declared"].item()
    assert notes == ["declared: positives 15 at the step, reference's 17 (its declared divergences reach it)"]
    assert excused({"model.rpn.smooth_l1_beta"}) == (
        {"rpn_box"},
        {"RPN head", "stem", "res2", "res3", "res4", "res5", "FPN"},
    )
    assert losses.loc[losses["loss"] == "mask", "mask"].item() == "3.1 (3.3e-02) ✗"
    assert grads.loc[grads["module"] == "stem", "box"].item() == "frozen"


@pytest.mark.e2e
def test_the_capture_fixes_the_draw_and_records_one_sgd_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return {"loss_objectness": self.net(x).pow(2).mean(), "acc": torch.tensor(1.0)}

    wrapped = WithLoss()
    optimizer = torch.optim.SGD(
        [
            {"params": [model[0].bias], "weight_decay": 0.0},
            {"params": list(model[1].parameters()), "weight_decay": 1e-2},
        ],
        lr=0.1,
        momentum=0.9,
    )
    with StepCapture() as capture:
        a, b = torch.randperm(50), torch.randperm(50, device="cpu")
        assert torch.equal(a, b) and not torch.equal(a, torch.arange(50))  # a fixed draw, not the identity
        seeded = torch.randperm(50, generator=torch.Generator().manual_seed(3))
        assert torch.equal(
            seeded, torch.randperm(50, generator=torch.Generator().manual_seed(3))
        )  # a generator's own
        wrapped(torch.randn(5, 4))["loss_objectness"].backward()
        optimizer.step()
    assert not torch.equal(torch.randperm(50), torch.randperm(50))  # left as it was
    record = capture.record(wrapped, dict)
    assert record["losses"] == {"rpn_cls": pytest.approx(float(capture.losses["loss_objectness"]))}
    assert set(record["grads"]) == {"net.0.bias", "net.1.weight", "net.1.bias"} and record["frozen"] == [
        "net.0.weight"
    ]
    assert record["groups"]["net.0.bias"] == (0.1, 0.0, 0.9) and record["groups"]["net.1.weight"] == (
        0.1,
        0.01,
        0.9,
    )
    assert record["update_error"] < 1e-6
    assert canonical_losses(
        {"loss_rpn_cls": [torch.tensor(0.25), torch.tensor(0.5)], "loss_bbox": torch.tensor(2.0)}
    ) == {"rpn_cls": 0.75, "roi_box": 2.0}


@pytest.mark.e2e
def test_an_update_that_is_not_sgds_is_found():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.5, momentum=0.9, nesterov=True
    )  # first step: 1.9 x the gradient
    with StepCapture() as capture:
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
    assert capture.record(model, dict)["update_error"] == pytest.approx(0.9, rel=1e-3)


@pytest.mark.e2e
def test_the_four_take_the_same_step(synth_root):
    """From the shared weights on the same batch, detectron2 and mmdet equal the reference within the check's
    tolerances, torchvision differs only where its declared keys reach, and equals the reference given its
    values of them; the step's work is the same in all four."""
    out = run_cli("parity", "--check-step", "--config", "cpu_small", "--data", synth_root, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.rstrip().endswith("no divergence"), out.stdout
    assert "#### with torchvision's values (model.roi_heads.mask_target bitmask_soft" in out.stdout
    work = [
        line
        for line in out.stdout.splitlines()
        if line.startswith(("| reference ", "| detectron2 ", "| mmdet ", "| torchvision "))
        and line.count("|") == 6
    ]
    counts = {tuple(cell.strip() for cell in line.split("|")[2:6]) for line in work}
    assert len(work) >= 4 and len(counts) == 1, work
    assert "(declared)" in out.stdout and "✗" not in out.stdout
