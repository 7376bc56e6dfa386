import hashlib
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn_bench.harness.data import CATEGORIES, DataError, check_coco_split, make_synthetic, resolve_data


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
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CATEGORIES
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= n  # at least one object per image
        for ann in anns:
            img = coco.loadImgs(ann["image_id"])[0]
            mask = coco.annToMask(ann)
            assert mask.shape == (img["height"], img["width"])
            # the stored area is the polygon's rasterised area, and the box encloses the mask
            assert mask.sum() == pytest.approx(ann["area"], abs=1)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
            assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1
            assert ann["iscrowd"] == 0
            assert (synth_root / split / img["file_name"]).is_file()
        assert len({a["category_id"] for a in anns}) >= 3  # several categories present


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
    from mrcnn_bench.harness.config import DataConfig

    with pytest.raises(DataError, match="data directory not found"):
        resolve_data(DataConfig(), str(tmp_path / "nope"))


def test_cli_synth(tmp_path):
    from conftest import run_cli

    out = run_cli("data", "synth", "--out", tmp_path / "s", "--images", 3, "--size", 64, "--seed", 1)
    assert out.returncode == 0, out.stderr
    assert "train: 3 images" in out.stdout
    again = run_cli("data", "synth", "--out", tmp_path / "s", "--images", 3)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
