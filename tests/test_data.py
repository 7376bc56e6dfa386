import hashlib
import json

import numpy as np
import pytest
from mrcnn_bench.harness.data.datasets import (
    COCO_CATEGORIES,
    DataError,
    check_coco_split,
    make_synthetic,
    resolve_data,
)
from pycocotools.coco import COCO


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synthetic_set_round_trips_through_pycocotools(synth_root, capsys):
    for split, n in (("train2017", 8), ("val2017", 4)):
        coco = COCO(str(synth_root / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == n
        # COCO's 80 categories under COCO's own ids (1..90 with gaps)
        assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == COCO_CATEGORIES
        assert len(COCO_CATEGORIES) == 80 and COCO_CATEGORIES[-1] == (90, "toothbrush")
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= n  # at least one object per image
        for ann in anns:
            img = coco.loadImgs(ann["image_id"])[0]
            mask = coco.annToMask(ann)
            assert mask.shape == (img["height"], img["width"])
            # the stored area is the rasterised area, and the box is the mask's extent
            assert mask.sum() == pytest.approx(ann["area"], abs=1)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == pytest.approx((x, y, x + w, y + h))
            if ann["iscrowd"]:  # crowd regions are uncompressed RLE, as COCO stores them
                assert set(ann["segmentation"]) == {"counts", "size"}
                assert sum(ann["segmentation"]["counts"]) == img["height"] * img["width"]
            else:
                assert isinstance(ann["segmentation"], list) and all(len(p) >= 6 for p in ann["segmentation"])
            assert (synth_root / split / img["file_name"]).is_file()


def test_synthetic_set_looks_like_coco(tmp_path):
    """What the model's work depends on: instances per image (COCO: 7.3, long-tailed), small objects,
    both orientations with COCO's proportions, crowd regions, multi-part masks, many categories."""
    paths = make_synthetic(tmp_path / "s", images=64, size=640, seed=0, val_images=4)
    coco = json.loads(paths.train_json.read_text())
    anns = [a for a in coco["annotations"] if not a["iscrowd"]]
    per_image = np.bincount([a["image_id"] for a in anns], minlength=65)[1:]
    assert 6.0 <= per_image.mean() <= 8.5 and per_image.max() >= 15 and per_image.min() >= 1
    assert 0.25 <= np.mean([a["area"] < 32**2 for a in anns]) <= 0.6  # COCO: 41% small
    sizes = {(im["width"], im["height"]) for im in coco["images"]}
    assert max(max(s) for s in sizes) == 640 and (640, 480) in sizes and (480, 640) in sizes
    assert 0.1 <= np.mean([im["height"] > im["width"] for im in coco["images"]]) <= 0.45
    assert 2 <= sum(a["iscrowd"] for a in coco["annotations"]) <= 16
    assert sum(len(a["segmentation"]) > 1 for a in anns) >= 0.05 * len(anns)
    assert len({a["category_id"] for a in anns}) >= 60


def test_synthetic_set_is_deterministic(tmp_path):
    a = make_synthetic(tmp_path / "a", images=5, size=96, seed=3)
    b = make_synthetic(tmp_path / "b", images=5, size=96, seed=3)
    c = make_synthetic(tmp_path / "c", images=5, size=96, seed=4)
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)


def test_synthetic_refuses_to_overwrite_and_leaves_nothing_on_bad_args(tmp_path):
    make_synthetic(tmp_path / "x", images=2, size=64)
    with pytest.raises(DataError, match="exists and is not empty"):
        make_synthetic(tmp_path / "x", images=2, size=64)
    with pytest.raises(DataError, match="--size"):
        make_synthetic(tmp_path / "y", images=2, size=8)
    assert not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary folder left behind


def test_check_split_names_the_problem(tmp_path, synth_root):
    ann = synth_root / "annotations" / "instances_train2017.json"
    bad = tmp_path / "bad.json"
    bad.write_text(ann.read_text()[:100])
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        check_coco_split(bad, synth_root / "train2017")
    coco = json.loads(ann.read_text())
    coco["images"].append({"id": 999, "file_name": "missing.jpg", "width": 10, "height": 10})
    bad.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"absent from .*missing\.jpg"):
        check_coco_split(bad, synth_root / "train2017")
    coco["annotations"] = []
    bad.write_text(json.dumps(coco))
    with pytest.raises(DataError, match="'annotations' is empty"):
        check_coco_split(bad, synth_root / "train2017")


def test_resolve_data_reports_missing_dir(tmp_path):
    from mrcnn_bench.harness.config.schema import DataConfig

    with pytest.raises(DataError, match="data directory not found"):
        resolve_data(DataConfig(), str(tmp_path / "nope"))


@pytest.mark.e2e
def test_cli_synth(tmp_path):
    from conftest import run_cli

    out = run_cli("data", "synth", "--out", tmp_path / "s", "--images", 3, "--size", 64, "--seed", 1)
    assert out.returncode == 0, out.stderr
    assert "train: 3 images" in out.stdout
    again = run_cli("data", "synth", "--out", tmp_path / "s", "--images", 3)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


def test_a_few_unusable_annotations_are_dropped_alike_and_counted(tmp_path, synth_root, monkeypatch):
    """Below data_check.MAX_DROPPED_SHARE, unusable annotations (here: one polygon of 2 points, one box of
    no width) are dropped from the file every implementation reads, and polygons of fewer than 3 points
    from the annotations that keep others; the summary counts both; the index (class count, usable
    images) is the cleaned file's."""
    import shutil

    from mrcnn_bench.harness.config.schema import DataConfig
    from mrcnn_bench.harness.data import check as data_check
    from mrcnn_bench.harness.data.check import usable_images

    monkeypatch.setenv("MRCNN_BENCH_DATA", str(tmp_path / "cache" / "data"))
    monkeypatch.setattr(data_check, "MAX_DROPPED_SHARE", 0.1)
    root = tmp_path / "set"
    shutil.copytree(synth_root, root)
    ann = root / "annotations" / "instances_train2017.json"
    coco = json.loads(ann.read_text())
    plain = [a for a in coco["annotations"] if not a["iscrowd"]]
    plain[0]["segmentation"] = [[1.0, 2.0, 5.0, 6.0]]  # unusable: its only polygon has 2 points
    plain[1]["bbox"][2] = 0.0  # unusable: no width
    plain[2]["segmentation"] = plain[2]["segmentation"] + [[3.0, 3.0]]  # kept, without its 1-point polygon
    ann.write_text(json.dumps(coco))

    paths, summary = resolve_data(DataConfig(), str(root))
    assert summary["train"]["dropped"] == {"annotations": 2, "short_polygons": 2}
    assert summary["train"]["annotations"] == len(coco["annotations"])
    assert summary["train"]["headers_checked"] == len(coco["images"])
    assert paths.train_json != ann and paths.train_json.is_relative_to(tmp_path / "cache")
    cleaned = json.loads(paths.train_json.read_text())
    ids = {a["id"] for a in cleaned["annotations"]}
    assert (
        len(ids) == len(coco["annotations"]) - 2 and plain[0]["id"] not in ids and plain[1]["id"] not in ids
    )
    third = next(a for a in cleaned["annotations"] if a["id"] == plain[2]["id"])
    assert third["segmentation"] == plain[2]["segmentation"][:-1]
    index = data_check.index_of(paths.train_json)
    assert index == {"categories": 80, "usable": [[i, w] for i, w in usable_images(cleaned).items()]}
    assert (
        "dropped" not in summary["val"] and paths.val_json == root / "annotations" / "instances_val2017.json"
    )


def test_a_split_that_passed_is_not_parsed_again_until_its_files_change(tmp_path, synth_root, monkeypatch):
    import os
    import shutil

    from mrcnn_bench.harness.data import check as data_check

    monkeypatch.setenv("MRCNN_BENCH_DATA", str(tmp_path / "cache" / "data"))
    root = tmp_path / "set"
    shutil.copytree(synth_root, root)
    ann, images = root / "annotations" / "instances_train2017.json", root / "train2017"
    parses = []
    real_read = data_check._read
    monkeypatch.setattr(data_check, "_read", lambda path: parses.append(path) or real_read(path))
    first = data_check.inspect_split(ann, images, train=True)
    data_check._INDEX.clear()
    again = data_check.inspect_split(ann, images, train=True)
    assert again == first and parses == [ann]  # the second answer came from the kept verdict
    assert data_check.registered()[str(ann)] == data_check._index(
        json.loads(ann.read_text())
    )  # and so did the index
    st = ann.stat()
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: checked again
    data_check.inspect_split(ann, images, train=True)
    (images / "extra.jpg").write_bytes(b"")  # the folder changed: checked again
    data_check.inspect_split(ann, images, train=True)
    assert parses == [ann, ann, ann]


def test_the_fast_path_of_the_pass_accepts_only_what_the_full_check_accepts():
    """data_check._plain decides most annotations without building a verdict; whatever it passes, the
    full check (_unusable) must pass too, and what it sends on is judged by the full check."""
    from mrcnn_bench.harness.data.check import Known, _plain, _unusable

    square = [0, 0, 10, 0, 10, 10, 0, 10]
    cases = [
        {"bbox": [1, 2, 3, 4], "segmentation": [square]},
        {"bbox": [1.5, 2, 3.25, 4], "segmentation": [square, square[:6]], "iscrowd": 0},
        {"bbox": [1, 2, 3, 4], "segmentation": {"counts": "abc", "size": [10, 10]}, "iscrowd": 1},
        {
            "bbox": [1, 2, 3, 4],
            "segmentation": [[0, 0, 1, 1]],
            "iscrowd": 1,
        },  # a crowd's polygons are not judged
        {"bbox": [1, 2, 3, 4]},
        {"bbox": [1, 2, 0, 4], "segmentation": [square]},
        {"bbox": [1, 2, 3, -1], "segmentation": [square]},
        {"bbox": [1, 2, 3], "segmentation": [square]},
        {"bbox": [1, "2", 3, 4], "segmentation": [square]},
        {"bbox": (1, 2, 3, 4), "segmentation": [square]},
        {"bbox": [True, 2, 3, 4], "segmentation": [square]},
        {"bbox": [1, 2, float("nan"), 4], "segmentation": [square]},
        {"bbox": [1, 2, 3, 4], "segmentation": [[0, 0, 1, 1]]},
        {"bbox": [1, 2, 3, 4], "segmentation": [square, [0, 0, 1, 1]]},
        {"bbox": [1, 2, 3, 4], "segmentation": [square + [5]]},
        {"bbox": [1, 2, 3, 4], "segmentation": ["not a polygon"]},
        {"segmentation": [square]},
    ]
    cases += [
        {
            "bbox": [1, 2, 3, 4],
            "segmentation": [[str(v) for v in square]],
        },  # numbers as strings (a labelling tool)
        {"bbox": [1, 2, 3, 4], "segmentation": {"counts": [0, 4], "size": [2, 2]}},  # RLE, not a crowd region
        {"bbox": [1, 2, 3, 4], "segmentation": [square], "area": 0},
        {
            "bbox": [1, 2, 3, 4],
            "segmentation": [square],
            "category_id": 99,
        },  # not among the file's categories
        {"bbox": [1, 2, 3, 4], "segmentation": [square], "image_id": 99},  # not among its images
        {"bbox": [1, 2, 3, 4], "segmentation": [[0, 0, 10, 0, float("inf"), 10]]},
    ]
    known = Known({1}, {7})
    cases = [{"area": 12.0, "category_id": 1, "image_id": 7, **a} for a in cases]
    fast = [_plain(a, known) for a in cases]
    full = [_unusable(a, known) for a in cases]
    assert all(f == (None, 0) for f, p in zip(full, fast) if p)
    assert fast == [True, True, True, True, True] + [False] * 18
    assert [why is None for why, _ in full] == [True] * 5 + [False] * 5 + [True, False, False, True] + [
        False
    ] * 9
    assert (
        _plain({k: v for k, v in cases[0].items() if k != "area"}, known) is False
    )  # a missing area: the copy gets the box's
    assert _unusable({k: v for k, v in cases[0].items() if k != "area"}, known) == (None, 0)


def test_the_pass_finds_images_by_one_listing_and_reads_what_json_reads(tmp_path, synth_root):
    """Images in a subfolder of the image folder are found; a dangling link is absent; a file with NaN
    (Python's json module takes it, as the frameworks' loaders do) is read, not refused."""
    from mrcnn_bench.harness.data.check import _absent, _read

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"x")
    (images / "sub" / "b.jpg").write_bytes(b"x")
    (images / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (images / "linked.jpg").symlink_to(images / "a.jpg")
    listed = [
        {"file_name": n} for n in ("a.jpg", "sub/b.jpg", "gone.jpg", "linked.jpg", "sub/c.jpg", "c.jpg")
    ]
    assert _absent(images, listed) == ["gone.jpg", "sub/c.jpg", "c.jpg"]
    nan = tmp_path / "nan.json"
    nan.write_text('{"images": [], "annotations": [{"bbox": [NaN, 1, 2, 3]}], "categories": []}')
    assert np.isnan(_read(nan)["annotations"][0]["bbox"][0])
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"images": [\xff')
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        _read(bad)
