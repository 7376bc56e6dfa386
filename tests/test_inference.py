"""The inference benchmark and the accuracy check (harness/engine/inference.py; `run --task infer` and `--task
eval`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, run_cli
from mrcnn_bench.harness.engine.inference import (
    EmptyPath,
    check_not_empty,
    coco_ap,
    coco_results,
    count_outputs,
    inference_summary,
    latency_stats,
    load_images,
    time_batches,
)


def _out(n: int, mask_value: float = 1.0, size: int = 4) -> dict:
    return {
        "boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]] * n),
        "scores": torch.full((n,), 0.9),
        "labels": torch.ones(n, dtype=torch.int64),
        "masks": torch.full((n, size, size), mask_value),
    }


def test_latency_stats_are_numpys_percentiles_and_images_over_seconds():
    st = latency_stats([0.1, 0.2, 0.3, 0.4, 1.0], batch_size=2)
    assert st["images_per_s"] == pytest.approx(10 / 2.0)
    assert st["latency_ms_mean"] == pytest.approx(400.0)
    assert st["latency_ms_p50"] == pytest.approx(300.0)
    assert st["latency_ms_p90"] == pytest.approx(760.0)  # linear between the 4th and 5th: 400 + 0.6 x 600
    assert st["latency_ms_p95"] == pytest.approx(880.0)
    assert st["latency_ms_p99"] == pytest.approx(976.0)
    assert st["calls"] == 5 and st["batch_size"] == 2


def test_masks_count_from_the_threshold_on():
    outputs = [_out(2, mask_value=0.5), _out(3, mask_value=0.49), _out(0)]
    assert count_outputs(outputs) == (5, 2)


def test_time_batches_takes_the_images_in_turn_and_leaves_warmup_out():
    images = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(5)]
    seen = []

    def predict(batch):
        seen.append([int(im[0, 0, 0]) for im in batch])
        return [_out(3) for _ in batch]

    rows = time_batches(predict, images, [1, 2], warmup=1, batches=3, device="cpu")
    assert seen == [[0], [1], [2], [3], [4, 0], [1, 2], [3, 4], [0, 1]]  # 1 warm-up + 3 timed per size
    assert [r["iter"] for r in rows] == list(range(6))
    assert [r["batch_size"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert [(r["detections"], r["masks"]) for r in rows] == [(3, 3)] * 3 + [(6, 6)] * 3
    assert all(r["duration"] > 0 and r["max_memory_mb"] > 0 for r in rows)

    summary = inference_summary(rows)
    assert set(summary["batch_sizes"]) == {"1", "2"}
    assert summary["images"] == 9 and summary["iterations"] == 6 and summary["task"] == "infer"
    assert summary["images_per_s"] == pytest.approx(9 / sum(r["duration"] for r in rows))
    two = summary["batch_sizes"]["2"]
    assert two["detections_per_image"] == 3.0 and two["masks_per_image"] == 3.0 and two["calls"] == 3
    assert two["images_per_s"] == pytest.approx(6 / sum(r["duration"] for r in rows[3:]))


def test_a_batch_size_with_no_detection_fails_the_run_with_its_reason():
    rows = [
        {"batch_size": 1, "detections": 4, "masks": 4},
        {"batch_size": 1, "detections": 0, "masks": 0},
        {"batch_size": 2, "detections": 0, "masks": 0},
        {"batch_size": 2, "detections": 0, "masks": 0},
    ]
    with pytest.raises(
        EmptyPath, match=r"mmdet: the 2 timed calls of batch size 2 returned 0 detections and 0 masks"
    ):
        check_not_empty(rows, "mmdet")
    with pytest.raises(EmptyPath, match="returned 3 detections and 0 masks"):
        check_not_empty([{"batch_size": 1, "detections": 3, "masks": 0}], "x")
    check_not_empty(rows[:2], "mmdet")  # one image with nothing on it: what that image holds


def _ground_truth_as_outputs(coco, image_ids, shift: float = 0.0):
    """Each image's annotations as a predictor's output: boxes x1y1x2y2 (moved right by ``shift`` x their
    width), labels 1..K by category id, masks from pycocotools."""
    cat_ids = sorted(coco.getCatIds())
    outputs = []
    for image_id in image_ids:
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
        boxes = torch.tensor(
            [
                [
                    a["bbox"][0] + shift * a["bbox"][2],
                    a["bbox"][1],
                    a["bbox"][0] + (1 + shift) * a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ]
        ).reshape(-1, 4)
        outputs.append(
            {
                "boxes": boxes,
                "scores": torch.linspace(0.9, 0.5, len(anns)),
                "labels": torch.tensor(
                    [cat_ids.index(a["category_id"]) + 1 for a in anns], dtype=torch.int64
                ),
                "masks": torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).float()
                if anns
                else torch.zeros(0, 1, 1),
            }
        )
    return outputs


def test_coco_results_scored_by_pycocotools_the_ground_truth_is_ap_1(synth_root):
    from pycocotools.coco import COCO

    coco = COCO(str(synth_root / "annotations" / "instances_val2017.json"))
    ids = sorted(coco.getImgIds())
    assert [
        i
        for i, _ in load_images(synth_root / "annotations" / "instances_val2017.json", synth_root / "val2017")
    ] == ids
    exact = coco_ap(coco, coco_results(_ground_truth_as_outputs(coco, ids), ids, sorted(coco.getCatIds())))
    assert exact["bbox"]["AP"] == pytest.approx(1.0) and exact["segm"]["AP"] == pytest.approx(1.0)
    # boxes moved by 0.6 of their width overlap their objects at IoU 0.25: no box counts; the masks still do
    moved = coco_ap(
        coco, coco_results(_ground_truth_as_outputs(coco, ids, shift=0.6), ids, sorted(coco.getCatIds()))
    )
    assert moved["bbox"]["AP"] == pytest.approx(0.0) and moved["segm"]["AP"] == pytest.approx(1.0)
    assert coco_ap(coco, []) == {"bbox": {"AP": 0.0, "AP50": 0.0}, "segm": {"AP": 0.0, "AP50": 0.0}}


# ----------------------------------------------------------------------- the four eval paths
def _tiny_config(**overrides):
    from mrcnn_bench.harness.config.schema import load_config

    values = {
        TINY[i + 1].split("=")[0]: json.loads(TINY[i + 1].split("=")[1]) for i in range(0, len(TINY), 2)
    }
    return load_config(ROOT / "configs" / "cpu_small.yaml", {**values, **overrides})


@pytest.fixture(scope="module")
def detecting_weights(tmp_path_factory, synth_root):
    """The shared initialisation with the classifier's first class and its mask biased up: every
    proposal scores ~0.97 for class 1 and its mask ~0.98, so every framework detects (up to 100 per image)
    and runs its mask head and pasting."""
    from mrcnn_bench.harness.data.datasets import DataPaths, num_classes
    from mrcnn_bench.harness.run.init_weights import initial_weights

    cfg = _tiny_config()
    data = DataPaths.from_root(synth_root)
    path, _ = initial_weights(cfg, num_classes(cfg, data), cache_dir=tmp_path_factory.mktemp("init"))
    state = torch.load(path, weights_only=True)
    state["roi_heads.box_predictor.cls_score.bias"][1] = 8.0
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"][1] = 4.0
    out = path.with_name("detecting.pth")
    torch.save(state, out)
    state["roi_heads.box_predictor.cls_score.bias"][0] = (
        30.0  # background: no class reaches the score threshold
    )
    torch.save(state, path.with_name("silent.pth"))
    return out, data


@pytest.mark.e2e
def test_every_framework_eval_path_detects_alike_with_the_same_weights(detecting_weights):
    """Same weights, same images: each installed framework's own eval path returns detections of class 1
    with masks pasted at each image's size, and as many as the others."""
    from mrcnn_bench.adapters import get_adapter
    from mrcnn_bench.adapters.base import DistInfo

    weights, data = detecting_weights
    cfg = _tiny_config(**{"model.init_weights": str(weights)})
    images = [im for _, im in load_images(data.val_json, data.val_images)][:2]
    counts = {}
    for name in ("reference", "torchvision", "detectron2", "mmdet"):
        adapter = get_adapter(name)
        if not adapter.available()[0]:
            continue
        with torch.inference_mode():
            outputs = adapter.predictor(cfg, data, DistInfo())(images)
        for image, out in zip(images, outputs):
            h, w = image.shape[-2:]
            n = len(out["boxes"])
            assert 0 < n <= cfg.model.roi_heads.detections_per_image, name
            assert out["masks"].shape == (n, h, w), name
            assert set(out["labels"].tolist()) == {1}, name
            assert bool((out["scores"] >= cfg.model.roi_heads.score_thresh_test).all()), name
            boxes = out["boxes"]
            assert bool(
                (boxes[:, 0] >= -1e-3).all()
                and (boxes[:, 2] <= w + 1e-3).all()
                and (boxes[:, 3] <= h + 1e-3).all()
            ), name
        counts[name] = count_outputs(outputs)
    assert {"reference", "torchvision"} <= set(counts)
    for name in ("reference", "torchvision"):  # bf16: the call under torch.autocast, as --task infer runs it
        predict = get_adapter(name).predictor(cfg, data, DistInfo())
        rows = time_batches(
            predict, images, [2], warmup=0, batches=1, device="cpu", autocast_dtype=torch.bfloat16
        )
        assert rows[0]["detections"] > 0 and rows[0]["masks"] > 0, name
    detections = [d for d, _ in counts.values()]
    assert max(detections) <= 1.1 * min(detections), counts
    assert all(m >= 0.9 * d for d, m in counts.values()), counts


@pytest.mark.e2e
def test_shared_training_trains_torchvision_once_and_caches(tmp_path, synth_root):
    from mrcnn_bench.adapters._common import load_initial_weights
    from mrcnn_bench.harness.data.datasets import DataPaths, num_classes
    from mrcnn_bench.harness.run.init_weights import initial_weights
    from mrcnn_bench.harness.run.shared_training import with_shared_training

    data = DataPaths.from_root(synth_root)
    cfg = _tiny_config(**{"benchmark.task": "infer", "benchmark.shared_training_iters": 2})
    init, _ = initial_weights(cfg, num_classes(cfg, data), cache_dir=tmp_path)
    cfg = cfg.with_overrides({"model.init_weights": str(init)})
    assert with_shared_training(cfg.with_overrides({"benchmark.task": "train"}), data, tmp_path)[1] is None
    trained_cfg, message = with_shared_training(cfg, data, tmp_path)
    path = Path(trained_cfg.model.init_weights)
    assert path.is_file() and "torchvision's model, 2 iterations" in message
    before, after = load_initial_weights(str(init)), load_initial_weights(str(path))
    assert set(before) <= set(after)
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert "roi_heads.box_predictor.cls_score.weight" in moved  # trained, not copied
    stamp = path.stat().st_mtime_ns
    assert Path(with_shared_training(cfg, data, tmp_path)[0].model.init_weights) == path
    assert path.stat().st_mtime_ns == stamp  # cached: not trained again


# ------------------------------------------------------------------------------ through the CLI
@pytest.mark.e2e
def test_run_task_infer_writes_latency_per_batch_size_and_fails_an_empty_path(tmp_path, detecting_weights):
    weights, data = detecting_weights
    common = [
        "--config",
        "cpu_small",
        *TINY,
        "--data",
        data.root,
        "--task",
        "infer",
        "--batch-sizes",
        "1,2",
        "--set",
        "benchmark.infer_batches=2",
        "--set",
        "benchmark.infer_warmup=1",
        "--out",
        tmp_path,
    ]
    out = run_cli(
        "run", "--impl", "reference", *common, "--run-id", "inf", "--set", f"model.init_weights={weights}"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for impl in ("reference",):  # every framework's path: test_every_framework_eval_path_detects_alike
        record = json.loads((tmp_path / "inf" / impl / "run.json").read_text())
        assert record["status"] == "ok" and record["measures"].startswith("inference")
        sizes = record["summary"]["batch_sizes"]
        assert set(sizes) == {"1", "2"}
        for st in sizes.values():
            assert st["calls"] == 2 and st["detections_per_image"] > 0 and st["masks_per_image"] > 0
            assert st["latency_ms_p50"] <= st["latency_ms_p99"] and st["images_per_s"] > 0
        rows = [
            json.loads(line)
            for line in (tmp_path / "inf" / impl / "iterations.jsonl").read_text().splitlines()
        ]
        assert [r["batch_size"] for r in rows] == [1, 1, 2, 2]
        assert sizes["2"]["latency_ms_mean"] == pytest.approx(
            1e3 * np.mean([r["duration"] for r in rows[2:]])
        )
    report = run_cli("report", tmp_path / "inf", "--plots", tmp_path / "plots")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "### Inference" in report.stdout
    assert re.search(r"\| Batch size +\| reference +\|", report.stdout), report.stdout
    assert (tmp_path / "plots" / "latency.png").is_file()
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n<!-- mrcnn-bench inference: begin -->\nold\n<!-- mrcnn-bench inference: end -->\n"
    )
    assert run_cli("report", tmp_path / "inf", "--into", readme).returncode == 0
    assert "old" not in readme.read_text() and re.search(r"\| Batch size +\| reference", readme.read_text())
    gate = run_cli("regress", "--baseline", tmp_path / "inf", "--candidate", tmp_path / "inf")
    assert gate.returncode == 0, gate.stdout + gate.stderr[-2000:]

    # weights whose background class wins everywhere: nothing above the score threshold, so the run fails,
    # saying why
    empty = run_cli(
        "run",
        "--impl",
        "torchvision",
        *common,
        "--run-id",
        "empty",
        "--set",
        f"model.init_weights={weights.with_name('silent.pth')}",
    )
    assert empty.returncode == 1
    record = json.loads((tmp_path / "empty" / "torchvision" / "run.json").read_text())
    assert record["status"] == "failed" and "EmptyPath: torchvision:" in record["reason"]
    assert "returned 0 detections and 0 masks" in record["reason"]


@pytest.mark.e2e
def test_run_task_eval_scores_each_trained_model_with_pycocotools(tmp_path, synth_root):
    out = run_cli(
        "run",
        "--impl",
        "reference",
        "--config",
        "cpu_small",
        *TINY,
        "--data",
        synth_root,
        "--task",
        "eval",
        "--out",
        tmp_path,
        "--run-id",
        "ev",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for impl in ("reference",):  # the other three's eval paths: test_every_framework_eval_path_detects_alike
        record = json.loads((tmp_path / "ev" / impl / "run.json").read_text())
        acc = record["summary"]["accuracy"]
        assert record["summary"]["images_per_s"] > 0 and acc["images"] == 4
        for kind in ("bbox", "segm"):
            assert 0.0 <= acc[kind]["AP"] <= acc[kind]["AP50"] <= 1.0
        assert f"{impl}: bbox AP" in out.stderr
    report = run_cli("report", tmp_path / "ev")
    assert "### Accuracy" in report.stdout and "bbox AP / AP50" in report.stdout
    # the same run's mlperf.log, through MLCommons' compliance checker (tests/test_mlperf.py)
    from test_mlperf import check_the_run_log

    check_the_run_log(tmp_path / "ev" / "reference", tmp_path)


def test_accuracy_table_flags_an_implementation_outside_the_band():
    import pandas as pd
    from mrcnn_bench.harness.tasks.eval import AP_BAND, accuracy_table

    def acc(bbox50, segm50):
        return {
            "bbox": {"AP": bbox50 / 300, "AP50": bbox50 / 100},
            "segm": {"AP": segm50 / 300, "AP50": segm50 / 100},
            "detections_per_image": 50.0,
        }

    df = pd.DataFrame(
        {
            "impl": ["a", "b", "c", "d"],
            "task": ["eval"] * 4,
            "status": ["ok"] * 4,
            "images_per_s": [1.0, 2.0, 3.0, 4.0],
            "accuracy": [acc(10.0, 8.0), acc(11.0, 8.4), acc(9.6, 7.8), acc(10.4, 2.0)],
        }
    )
    table = accuracy_table(df)
    column = f"Within {AP_BAND} AP50 of the median"
    assert table[column].tolist() == ["yes", "yes", "yes", "no (5.9)"]  # segm 2.0 against the median 7.9
    assert table["bbox AP / AP50"].tolist()[0] == "3.3 / 10.0"
    assert accuracy_table(df.assign(task="train")) is None


# ------------------------------------------------------------------------------ the committed runs
BASELINES = ROOT / "results" / "baselines"
FOUR = {"reference", "torchvision", "detectron2", "mmdet"}


@pytest.mark.e2e
def test_committed_eval_paths_agree_with_the_same_weights():
    """benchmarks/eval_paths.py: one set of trained weights (torchvision's, from the shared training)
    through the four eval paths: as many detections per image (within 10%); the three paths with aligned
    RoIAlign within the AP50 band of their median, bbox and segm. torchvision's own path, whose unaligned
    RoIAlign is the one these weights were trained with, scores higher on these 128-px images (measured:
    bbox / segm AP50 16.4 / 14.3 against 12.8-13.7 / 9.6-10.8): the alignment, not the paths' other
    steps, is where they part (docs/inference.md, "Their eval paths")."""
    from mrcnn_bench.harness.tasks.eval import AP_BAND, ap50_offsets

    data = json.loads((BASELINES / "eval-paths" / "eval-paths.json").read_text())
    results = data["results"]
    assert set(results) == FOUR
    detections = [r["detections_per_image"] for r in results.values()]
    assert max(detections) <= 1.1 * min(detections), detections
    aligned = [results[i] for i in ("reference", "detectron2", "mmdet")]
    assert max(ap50_offsets(aligned)) <= AP_BAND
    for kind in ("bbox", "segm"):
        assert results["torchvision"][kind]["AP50"] > max(r[kind]["AP50"] for r in aligned)
    assert all(
        100 * r[kind]["AP50"] > 5 for r in results.values() for kind in ("bbox", "segm")
    )  # trained, not noise


def _committed_eval() -> dict:
    from mrcnn_bench.harness.records.frames import load_runs

    records = {r["impl"]: r for r in load_runs([BASELINES / "eval-cpu"])}
    assert set(records) == FOUR and all(r["status"] == "ok" for r in records.values())
    return records


def test_committed_eval_all_four_learned_from_the_same_pixels_and_work():
    """results/baselines/eval-cpu (seed 0, the rules aligned): every implementation learned (AP50 well
    above an untrained model's ~0), all four padded the same pixels per image over the run (they resize
    alike now; detectron2 and mmdet used to pad 8.8% more) and sampled positive anchors and RoIs within
    10% of each other over the 200 iterations (measured: 1.3% and 6.5%; the four models train apart, and
    the positives follow each model's proposals)."""
    from mrcnn_bench.harness.records.frames import iterations_of

    records = _committed_eval()
    for impl, record in records.items():
        for kind in ("bbox", "segm"):
            assert 100 * record["summary"]["accuracy"][kind]["AP50"] > 5, (impl, kind)
    per_image = {}
    for impl, record in records.items():
        rows = iterations_of(record)
        images = sum(r["images"] for r in rows)
        per_image[impl] = {
            k: sum(r[k] for r in rows) / images for k in ("pixels", "rpn_positives", "positives")
        }
    assert len({round(v["pixels"], 6) for v in per_image.values()}) == 1, per_image
    for key in ("rpn_positives", "positives"):
        values = [v[key] for v in per_image.values()]
        assert max(values) <= 1.10 * min(values), (key, per_image)


@pytest.mark.xfail(
    strict=True,
    reason="measured (results/baselines/eval-cpu, seed 0, the work rules aligned): bbox/segm AP50 "
    "detectron2 14.0/14.2, mmdet 13.0/13.4, reference 12.8/11.9, torchvision 16.4/14.3: the "
    "reference 1.8 and torchvision 2.9 AP50 from the median, outside the 1.5-point band; seed 1 "
    "moved detectron2 by 6 points, and at seed 2 mmdet and torchvision diverged (NaN at "
    "iterations 50 and 81; results/baselines/eval-seeds, docs/inference.md)",
)
def test_committed_eval_all_four_learn_within_the_band():
    from mrcnn_bench.harness.tasks.eval import AP_BAND, ap50_offsets

    records = _committed_eval()
    assert max(ap50_offsets([r["summary"]["accuracy"] for r in records.values()])) <= AP_BAND


def test_committed_inference_run_every_framework_detects_alike():
    """results/baselines/infer-cpu (`run --task infer --config cpu_infer --impl all`): the four loaded the
    shared training's weights, and over all their timed calls (the same images, in the same order) found as
    many detections and masks per image, within 10%; every batch size timed with its stats."""
    from mrcnn_bench.harness.records.frames import iterations_of, load_runs

    records = {r["impl"]: r for r in load_runs([BASELINES / "infer-cpu"])}
    assert set(records) == FOUR and all(r["status"] == "ok" for r in records.values())
    assert len({r["config"]["model"]["init_weights"] for r in records.values()}) == 1
    assert "trained200-torchvision" in records["reference"]["config"]["model"]["init_weights"]
    per_image = {}
    for impl, record in records.items():
        rows = iterations_of(record)
        assert [r["batch_size"] for r in rows] == [b for b in (1, 2, 4, 8) for _ in range(5)]
        images = sum(r["images"] for r in rows)
        per_image[impl] = (
            sum(r["detections"] for r in rows) / images,
            sum(r["masks"] for r in rows) / images,
        )
        for size, st in record["summary"]["batch_sizes"].items():
            assert (
                st["latency_ms_p50"] <= st["latency_ms_p90"] <= st["latency_ms_p95"] <= st["latency_ms_p99"]
            )
            assert st["images_per_s"] == pytest.approx(int(size) * 1e3 / st["latency_ms_mean"])
    for k in (0, 1):
        values = [v[k] for v in per_image.values()]
        assert max(values) <= 1.1 * min(values), per_image


def test_accuracy_over_seeds_is_judged_on_the_means_and_names_a_failed_seed():
    import pandas as pd
    from mrcnn_bench.harness.tasks.eval import AP_BAND, accuracy_table

    def acc(bbox50, segm50):
        return {
            "bbox": {"AP": bbox50 / 300, "AP50": bbox50 / 100},
            "segm": {"AP": segm50 / 300, "AP50": segm50 / 100},
            "detections_per_image": 50.0,
        }

    rows = [
        ("a", 0, acc(10.0, 8.0)),
        ("a", 1, acc(14.0, 10.0)),
        ("b", 0, acc(12.0, 9.0)),
        ("b", 1, acc(12.0, 9.2)),
        ("c", 0, acc(6.0, 4.0)),
        ("c", 1, acc(6.0, 4.0)),
    ]
    df = pd.DataFrame(
        {
            "impl": [r[0] for r in rows] + ["d", "d"],
            "seed": [r[1] for r in rows] + [0, 1],
            "task": ["eval"] * 8,
            "status": ["ok"] * 7 + ["failed"],
            "reason": [None] * 7
            + ["rank 0: FloatingPointError: loss became nan at iteration 50: loss_objectness=nan"],
            "images_per_s": [1.0] * 8,
            "accuracy": [r[2] for r in rows] + [acc(12.0, 9.0), None],
        }
    )
    table = accuracy_table(df)
    column = f"Within {AP_BAND} AP50 of the median (of the means)"
    means = table[table["Seed"].str.startswith("mean")].set_index("Implementation")
    # means: a 12.0/9.0, b 12.0/9.1, c 6.0/4.0 -> medians 12.0/9.0: a and b inside, c 6.0 outside; d failed at
    # seed 1
    assert means.loc["a", "bbox AP / AP50"] == "4.0 / 12.0" and means.loc["a", column] == "yes"
    assert means.loc["b", column] == "yes" and means.loc["c", column] == "no (6.0)"
    assert means.loc["d", column] == "no (failed at seed 1: loss became nan at iteration 50)"
    assert table[table["Seed"] == "1"]["Implementation"].tolist() == ["a", "b", "c"]


def _canonical_eval() -> list[dict]:
    from mrcnn_bench.harness.records.frames import load_runs

    return load_runs([BASELINES / "eval-canonical"])


def test_committed_canonical_eval_trained_the_canonical_model_on_three_seeds():
    """results/baselines/eval-canonical (`run --task eval --config cpu_eval --set benchmark.seed=S`, S = 0, 1,
    2):
    every implementation on every seed, each seed from one shared initialisation with calibrated FrozenBN
    statistics, the canonical structure (nothing named as differing from it)."""
    from mrcnn_bench.harness.config.schema import structure_differences_of

    records = _canonical_eval()
    assert {(r["impl"], r["config"]["benchmark"]["seed"]) for r in records} == {
        (i, s) for i in FOUR for s in (0, 1, 2)
    }
    for seed in (0, 1, 2):
        inits = {
            r["config"]["model"]["init_weights"] for r in records if r["config"]["benchmark"]["seed"] == seed
        }
        assert len(inits) == 1, inits
    for r in records:
        assert structure_differences_of(r["config"]) == {}, r["impl"]
        assert (
            r["config"]["model"]["weights"] is None and r["config"]["model"]["backbone"]["norm"] == "FrozenBN"
        )


def test_committed_canonical_eval_all_four_finish_on_every_seed():
    """With the heads initialised as detectron2 initialises them (mask logits from N(0, 0.001): the first
    mask loss log 2, not 3 to 8), every implementation finished cpu_eval's 200 iterations on seeds 0, 1 and
    2 and learned (bbox AP50 above 3 on every seed; an untrained model scores about 0). Before, with He's
    fill on the mask logits, 5 of the 12 runs diverged (docs/inference.md)."""
    records = _canonical_eval()
    assert all(r["status"] == "ok" for r in records), [
        (r["impl"], r["config"]["benchmark"]["seed"], r["reason"]) for r in records if r["status"] != "ok"
    ]
    for r in records:
        assert 100 * r["summary"]["accuracy"]["bbox"]["AP50"] > 3, (
            r["impl"],
            r["config"]["benchmark"]["seed"],
        )


def _canonical_means() -> dict:
    from mrcnn_bench.harness.tasks.eval import mean_accuracy

    records = _canonical_eval()
    return {
        impl: mean_accuracy([r["summary"]["accuracy"] for r in records if r["impl"] == impl]) for impl in FOUR
    }


def test_committed_canonical_eval_three_of_four_within_the_band_of_the_means():
    """On the means over the three seeds the reference, torchvision and mmdet are within 1.5 AP50 of the
    median (measured: bbox / segm AP50 5.9 / 6.7, 6.3 / 6.5, 7.2 / 7.5; median 6.75 / 7.1)."""
    from mrcnn_bench.harness.tasks.eval import AP_BAND, ap50_offsets

    means = _canonical_means()
    offsets = dict(zip(means, ap50_offsets(list(means.values()))))
    assert all(offsets[impl] <= AP_BAND for impl in ("reference", "torchvision", "mmdet")), offsets


@pytest.mark.xfail(
    strict=True,
    reason="measured (results/baselines/eval-canonical, seeds 0, 1, 2): detectron2's mean bbox / segm "
    "AP50 10.4 / 10.7 is 3.7 / 3.6 above the median of the four means (6.75 / 7.1), and it "
    "is the highest at seeds 0 and 1; its first step equals the reference's within float "
    "rounding (parity --check-step --config cpu_eval) and its learning rate and work match "
    "over the run (parity --run): docs/inference.md",
)
def test_committed_canonical_eval_all_four_within_the_band_of_the_means():
    from mrcnn_bench.harness.tasks.eval import AP_BAND, ap50_offsets

    assert max(ap50_offsets(list(_canonical_means().values()))) <= AP_BAND


def test_committed_canonical_inference_at_its_best_the_reference_is_the_fastest_at_every_batch_size():
    """results/baselines/infer-cpu_canonical (`run --task infer --config cpu_infer_canonical --impl all
    --best`; mmdet's run 8 minutes later, after its NHWC was dropped): the four loaded the same weights (the
    shared training at 800 px), each with its declared best settings, found as many detections per image
    within 10% at
    every batch size, and the reference has the highest img/s at batch sizes 1, 2, 4 and 8."""
    from mrcnn_bench.harness.records.frames import load_runs

    records = {r["impl"]: r for r in load_runs([BASELINES / "infer-cpu_canonical"])}
    assert set(records) == FOUR and all(r["status"] == "ok" for r in records.values())
    assert len({r["config"]["model"]["init_weights"] for r in records.values()}) == 1
    assert "trained200-torchvision" in records["reference"]["config"]["model"]["init_weights"]
    assert all(r["config"]["input"]["min_size_test"] == 800 for r in records.values())
    assert all(r["settings"]["mode"] == "best" for r in records.values())
    applied = {impl: [a["name"] for a in r["settings"]["applied"]] for impl, r in records.items()}
    assert applied["mmdet"] == ["kept_host_memory", "fuse_conv_bn"]  # not NHWC (mmcv's RoIAlign misreads it)
    assert applied["torchvision"] == applied["detectron2"] == ["channels_last", "kept_host_memory"]
    for size in ("1", "2", "4", "8"):
        stats = {impl: r["summary"]["batch_sizes"][size] for impl, r in records.items()}
        rates = {impl: st["images_per_s"] for impl, st in stats.items()}
        assert max(rates, key=rates.get) == "reference", (size, rates)
        detections = [st["detections_per_image"] for st in stats.values()]
        assert max(detections) <= 1.1 * min(detections), (size, detections)
