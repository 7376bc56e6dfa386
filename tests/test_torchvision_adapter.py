import json

import pytest
from conftest import TINY, run_cli
from mrcnn_bench.adapters import adapter_names, get_adapter
from mrcnn_bench.harness.config.schema import builtin_config_dir, load_config
from mrcnn_bench.harness.parity.compare import canonical_values, parity_frame
from mrcnn_bench.harness.records.results import load_run, read_jsonl

CANONICAL = builtin_config_dir() / "mask_rcnn_R_50_FPN_noaug_1x.yaml"


def test_registry_discovers_adapters_without_importing_frameworks():
    assert "torchvision" in adapter_names()
    with pytest.raises(KeyError, match="unknown implementation 'nope'"):
        get_adapter("nope")


def test_effective_hparams_are_read_back_from_the_built_model(synth_root):
    cfg = load_config(CANONICAL)
    adapter = get_adapter("torchvision")
    from mrcnn_bench.harness.data.datasets import DataPaths

    data = DataPaths.from_root(synth_root)
    eff = adapter.effective_hparams(adapter.translate(cfg, data))
    canonical = canonical_values(cfg, num_classes=80)
    # every key torchvision can express equals the canonical value; the rest is explained
    table, notes = parity_frame(canonical, {"torchvision": eff})
    assert all("UNEXPLAINED" not in n for n in notes), notes
    diverging = {n.split(":")[1].split("=")[0].strip() for n in notes}
    # aligned=False RoIAlign, the fixed smooth-L1 beta 1/9 of its box losses (canonical: L1), fractional
    # bitmask crops as mask targets, proposals of sides >= 1e-3: exactly what its adapter declares it cannot
    # run
    assert (
        diverging
        == {
            "model.roi_heads.pooler_aligned",
            "model.rpn.smooth_l1_beta",
            "model.roi_heads.smooth_l1_beta",
            "model.roi_heads.mask_target",
            "model.rpn.min_proposal_size",
        }
        == set(adapter.divergences(cfg))
    )
    # the rules it runs as asked, read back from its parts
    assert eff["model.anchors.round_to_pixels"] is False and eff["input.resize_rounding"] == "round"
    assert eff["model.rpn.low_quality_matches"] is True
    off = cfg.with_overrides(
        {
            "model.rpn.low_quality_matches": False,
            "model.anchors.round_to_pixels": True,
            "input.resize_rounding": "floor",
        }
    )
    eff_off = adapter.effective_hparams(adapter.translate(off, data))
    assert (
        eff_off["model.rpn.low_quality_matches"] is False and eff_off["model.anchors.round_to_pixels"] is True
    )
    assert eff_off["input.resize_rounding"] == "floor"
    assert eff["model.num_classes"] == 80
    assert eff["model.rpn.pre_nms_topk_train"] == 2000 and eff["model.rpn.post_nms_topk_train"] == 1000
    # no weights: the canonical FrozenBN with stem + res2 frozen (statistics calibrated in the shared
    # initialisation)
    assert eff["model.backbone.freeze_at"] == 2 and eff["model.backbone.norm"] == "FrozenBN"
    bn = cfg.with_overrides(
        {"model.backbone.norm_without_weights": "BN", "model.backbone.freeze_at_without_weights": 0}
    )
    eff_bn = adapter.effective_hparams(adapter.translate(bn, data))  # trainable BN only when asked for
    assert eff_bn["model.backbone.freeze_at"] == 0 and eff_bn["model.backbone.norm"] == "BN"
    assert eff["solver.ims_per_batch_per_process"] == 2
    # a changed config is seen in the effective values, i.e. they are not copied from the config
    cfg2 = cfg.with_overrides({"model.rpn.nms_thresh": 0.6, "model.backbone.freeze_at_without_weights": 3})
    eff2 = adapter.effective_hparams(adapter.translate(cfg2, data))
    assert eff2["model.rpn.nms_thresh"] == 0.6 and eff2["model.backbone.freeze_at"] == 3


@pytest.mark.e2e
def test_two_process_cpu_run_writes_a_valid_run_and_report(synth_root, tmp_path):
    out = run_cli(
        "run",
        "--impl",
        "torchvision",
        "--gpus",
        2,
        "--device",
        "cpu",
        "--data",
        synth_root,
        "--out",
        tmp_path / "runs",
        "--run-id",
        "t",
        "--set",
        "solver.ims_per_batch=2",
        *TINY,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "iter 5/5" in out.stderr  # progress is shown
    run_dir = tmp_path / "runs" / "t" / "torchvision"
    record = load_run(run_dir)
    assert record["status"] == "ok" and record["world_size"] == 2 and record["device"] == "cpu"
    s = record["summary"]
    assert (s["warmup"], s["end"], s["iterations"]) == (2, 5, 3)
    assert s["images"] == 3 * 2  # global batch: 1 image on each of 2 processes
    rows = read_jsonl(run_dir / "iterations.jsonl")
    assert [r["iter"] for r in rows] == list(range(5))
    assert all(r["global_images"] == 2 and r["images"] == 1 for r in rows)
    # throughput is the window's images over the window's wall time, from the recorded stamps
    assert s["images_per_s"] == pytest.approx(6 / (rows[4]["end_time"] - rows[1]["end_time"]))
    assert all(r["loss"] > 0 for r in rows)
    env = record["environment"]
    assert env["torch_threads"] == 1 and env["impl_version"].startswith("0.29.1") and "load_average" in env
    assert record["effective_hparams"]["model.rpn.nms_thresh"] == 0.7
    assert record["config"]["input"]["min_size_train"] == [128]
    assert not list(run_dir.glob(".*partial*"))

    rep = run_cli("report", tmp_path / "runs" / "t", "--format", "md")
    assert rep.returncode == 0, rep.stderr
    lines = rep.stdout.strip().splitlines()
    assert lines[0].startswith("| Implementation") and "Throughput (img/s)" in lines[0]
    assert "torchvision" in lines[2] and "| ok" in lines[2] and f"{s['images_per_s']:.3f}" in lines[2]
    csv = run_cli("report", tmp_path / "runs" / "t", "--format", "json")
    assert json.loads(csv.stdout)[0]["images_per_s"] == pytest.approx(s["images_per_s"])

    again = run_cli(
        "run",
        "--impl",
        "torchvision",
        "--data",
        synth_root,
        "--out",
        tmp_path / "runs",
        "--run-id",
        "t",
        *TINY,
    )
    assert again.returncode == 2 and "--force" in again.stderr
