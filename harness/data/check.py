"""The one validating pass over a COCO split, in the ``mrcnn-bench`` process.

It refuses (``DataError``, exit 2, naming the file, the annotation or image id and what was expected)
what would make the implementations train on different data: every annotation unusable, more than
``MAX_DROPPED_SHARE`` of them unusable, a duplicate image or annotation id (pycocotools keeps the last,
detectron2 both), an image entry without a name or whole-number size, an image that does not decode whole
(a truncated JPEG decodes partly with OpenCV, mmdet's, and not with PIL) or whose size differs from the
json's, an image stored with an EXIF rotation (detectron2 and mmdet rotate it, the reference and
torchvision do not). An annotation is unusable when its box is not four finite numbers with a positive
width and height, its category or image is not listed, its area is not a number > 0 (mmdet skips those),
its polygons are not numbers, or it is not a crowd region and holds RLE (detectron2 reads polygons only).
A few unusable annotations among many (COCO has some: polygons of fewer than 3 points) are dropped for
every implementation alike: the frameworks then read a cleaned copy of the file, and run.json's data
summary counts what was dropped; a missing 'area' is given the box's in that copy (mmdet reads it), counted
too.

What the harness needs of the training split (its class count, the images every implementation trains
on, with their orientation: the run's data order is a function of these) is kept as the split's
*index*; it reaches each worker through the launch spec (:func:`registered` / :func:`register`), so
that no worker parses the annotation file for the harness: the framework's own loader is the only one.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
from pathlib import Path


class DataError(ValueError):
    """A data set that cannot be used; the message names the file and what is wrong."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("MRCNN_BENCH_DATA", Path.home() / ".cache" / "mrcnn-bench" / "data"))


#: mmdet's stock ``filter_cfg.min_size``: images with a side under this are not trained on
MIN_SIDE = 32


def usable_images(coco: dict) -> dict[int, bool]:
    """{image id: wider than tall} for the images every implementation trains on, by id."""
    keep = {a["image_id"] for a in coco["annotations"] if not a.get("iscrowd", 0)}
    return {
        im["id"]: im["width"] > im["height"]
        for im in sorted(coco["images"], key=lambda im: im["id"])
        if im["id"] in keep and min(im["width"], im["height"]) >= MIN_SIDE
    }


MAX_DROPPED_SHARE = 0.01  # more unusable annotations than this share: refused, not dropped
SIZE_SAMPLE = 500  # images read whole (size, EXIF orientation, a full decode): all of a smaller set
EXIF_ORIENTATION = 0x0112

_INDEX: dict[str, dict] = {}  # annotation file -> its index, in this process


def register(index: dict[str, dict]) -> None:
    """Indexes computed elsewhere (the launch spec's ``data_index``), keyed by annotation file."""
    _INDEX.update(index)


def registered() -> dict[str, dict]:
    return dict(_INDEX)


def index_of(json_path: str | os.PathLike) -> dict:
    """The index of a training split: ``{"categories": n, "usable": [[image id, wider than tall], ...]}``
    from this process's one pass, or (outside a run: tests, tools) from a parse of the file now."""
    key = str(json_path)
    if key not in _INDEX:
        _INDEX[key] = _index(_read(Path(json_path)))
    return _INDEX[key]


def _index(coco: dict) -> dict:

    return {
        "categories": len(coco["categories"]),
        "usable": [[i, wide] for i, wide in usable_images(coco).items()],
    }


def _read(json_path: Path) -> dict:
    import orjson  # here, not at the top: the workers (any framework's venv) import this module without it

    try:
        raw = json_path.read_bytes()
    except OSError as e:
        raise DataError(f"{json_path}: cannot read: {e}") from None
    try:
        coco = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # what the frameworks' json module also takes: NaN and Infinity, which orjson refuses
            coco = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{json_path}: not valid JSON (truncated or corrupt?): {e}") from None
    if not isinstance(coco, dict):
        raise DataError(f"{json_path}: expected a COCO object at the top level, got {type(coco).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(
                f"{json_path}: key '{key}' missing or not a list (expected COCO instances format)"
            )
    return coco


class Known:
    """The ids an annotation may point at: the file's categories and images (None: not checked)."""

    def __init__(self, categories=None, images=None):
        self.categories, self.images = categories, images


def _numbers(values) -> bool:
    """Whether ``values`` are all finite numbers (int or float; not strings, not NaN or infinity)."""
    return all(type(v) in _NUMBER or type(v) is bool for v in values) and all(
        math.isfinite(v) for v in values
    )


def _unusable(ann: dict, known: Known | None = None) -> tuple[str | None, int]:
    """(why this annotation cannot be trained on, or None; how many of its polygons have fewer than 3
    points)."""
    known = known or Known()
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        return "key 'bbox': expected [x, y, width, height]", 0
    if not all(math.isfinite(v) for v in box):
        return f"key 'bbox': expected finite numbers, got {box}", 0
    if box[2] <= 0 or box[3] <= 0:
        return f"key 'bbox': expected width and height > 0, got {box[2]} x {box[3]}", 0
    if known.categories is not None and not _listed(ann.get("category_id"), known.categories):
        return (
            f"key 'category_id': {ann.get('category_id')!r} is not the id of a category listed in the file",
            0,
        )
    if known.images is not None and not _listed(ann.get("image_id"), known.images):
        return f"key 'image_id': {ann.get('image_id')!r} is not the id of an image listed in the file", 0
    area = ann.get("area")
    if area is not None and not (type(area) in _NUMBER and math.isfinite(area) and area > 0):
        return f"key 'area': expected a number > 0 (mmdet skips the others), got {area!r}", 0
    segm = ann.get("segmentation")
    if isinstance(segm, dict) and not ann.get("iscrowd", 0):
        return (
            "key 'segmentation': RLE on an annotation that is not a crowd region (expected polygons: "
            "detectron2 "
            "reads only polygons there)"
        ), 0
    if isinstance(segm, list) and not ann.get("iscrowd", 0):
        if not all(_numbers(poly) for poly in segm if isinstance(poly, list)):
            return "key 'segmentation': expected polygons of numbers [x1, y1, x2, y2, ...]", 0
        short = sum(
            1 for poly in segm if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0)
        )
        if short == len(segm):
            return "key 'segmentation': expected a polygon of at least 3 points (6 numbers)", short
        return None, short
    return None, 0


def _clean(coco: dict, dropped: set[int]) -> dict:
    """The file as every implementation reads it: unusable annotations dropped, polygons of fewer than 3
    points removed from the others, and a missing 'area' given the box's (mmdet reads it; the others do
    not train on it)."""
    kept = []
    for ann in coco["annotations"]:
        if ann.get("id") in dropped:
            continue
        if isinstance(ann.get("segmentation"), list) and not ann.get("iscrowd", 0):
            ann = dict(
                ann,
                segmentation=[
                    p for p in ann["segmentation"] if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                ],
            )
        if ann.get("area") is None:
            ann = dict(ann, area=float(ann["bbox"][2] * ann["bbox"][3]))
        kept.append(ann)
    return dict(coco, annotations=kept)


def _plain(ann, known: Known | None = None) -> bool:
    """Whether an annotation is usable as it stands: a box [x, y, w, h] of finite numbers with w, h > 0, a
    listed category and image, an area > 0, and (unless a crowd region) polygons of 3 points or more of
    finite numbers. The common case, decided without building anything; every other annotation goes to
    :func:`_unusable` for the verdict and its wording (and a missing area to the cleaned copy)."""
    box = ann.get("bbox")
    if type(box) is not list or len(box) != 4:
        return False
    x, y, w, h = box
    if not (
        type(x) in _NUMBER
        and type(y) in _NUMBER
        and type(w) in _NUMBER
        and type(h) in _NUMBER
        and w > 0
        and h > 0
        and math.isfinite(x + y + w + h)
    ):
        return False
    area = ann.get("area")
    if not (type(area) in _NUMBER and area > 0 and math.isfinite(area)):
        return False
    if known is not None and not (
        _listed(ann.get("category_id"), known.categories) and _listed(ann.get("image_id"), known.images)
    ):
        return False
    segm = ann.get("segmentation")
    if not ann.get("iscrowd", 0):
        if type(segm) is dict:
            return False
        if type(segm) is list:
            for poly in segm:
                if type(poly) is not list or len(poly) < 6 or len(poly) & 1:
                    return False
                try:  # one C-speed pass: a string raises, NaN or infinity sums to a non-finite number
                    if not math.isfinite(sum(poly)):
                        return False
                except TypeError:
                    return False
    return True


_NUMBER = {int, float}


def _bad_image_entry(im) -> str | None:
    """Why an entry of 'images' cannot be read alike by every loader, or None."""
    if not isinstance(im, dict):
        return "expected an object with 'id', 'file_name', 'width' and 'height'"
    if not isinstance(im.get("file_name"), str) or not im["file_name"]:
        return "key 'file_name': expected the image's file name"
    for key in ("width", "height"):
        if type(im.get(key)) is not int or im[key] <= 0:
            return f"key '{key}': expected a whole number of pixels > 0, got {im.get(key)!r}"
    if type(im.get("id")) is not int:
        return f"key 'id': expected a whole number, got {im.get('id')!r}"
    return None


def _duplicate(items: list[dict], what: str) -> str | None:
    """Why the ids of ``items`` (objects) are not unique, or None."""
    seen: set = set()
    for item in items:
        i = item.get("id")
        try:
            if i in seen:
                return f"key '{what}': id {i!r} appears more than once (expected unique ids)"
            seen.add(i)
        except TypeError:  # a list or an object
            return f"key '{what}': id {i!r}: expected a number"
    return None


def _listed(value, ids: set) -> bool:
    """``value in ids``, False for a value that cannot be an id (a list, a dict)."""
    try:
        return value in ids
    except TypeError:
        return False


def _check_annotations(json_path: Path, coco: dict) -> tuple[dict, dict | None]:
    """(what was dropped, the cleaned file's content or None when nothing was)."""
    if not all(isinstance(a, dict) for a in coco["annotations"]):
        raise DataError(f"{json_path}: key 'annotations': expected a list of objects")
    twice = _duplicate(coco["annotations"], "annotations")
    if twice:
        raise DataError(f"{json_path}: {twice}")
    # the entries of 'images' and 'categories' are checked before: whole-number ids
    known = Known({c["id"] for c in coco["categories"]}, {im["id"] for im in coco["images"]})
    bad: list[tuple[object, str]] = []
    short_parts = no_area = 0
    for ann in coco["annotations"]:
        if _plain(ann, known):
            continue
        why, short = _unusable(ann, known)
        short_parts += short
        if why:
            bad.append((ann.get("id"), why))
        elif ann.get("area") is None:
            no_area += 1
    total = len(coco["annotations"])
    if bad and (len(bad) == total or len(bad) > MAX_DROPPED_SHARE * total):
        shown = "; ".join(f"annotation id {i}: {why}" for i, why in bad[:3]) + (
            f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        )
        every = (
            "every annotation"
            if len(bad) == total
            else f"{len(bad)} of {total} annotations (over {MAX_DROPPED_SHARE:.0%})"
        )
        raise DataError(f"{json_path}: {every} cannot be trained on: {shown}")
    if not bad and not short_parts and not no_area:
        return {}, None
    changed = {"annotations": len(bad), "short_polygons": short_parts}
    if no_area:
        changed["area_from_box"] = no_area
    return changed, _clean(coco, {i for i, _ in bad})


def _absent(image_dir: Path, images: list[dict]) -> list:
    """The file names listed under 'images' that are not files in ``image_dir``: one listing of the
    folder (a stat per symbolic link only), not a stat per image."""
    try:
        with os.scandir(image_dir) as entries:
            present = {e.name for e in entries if e.is_file()}
    except OSError as e:
        raise DataError(f"{image_dir}: cannot list the image folder: {e}") from None
    absent = []
    for im in images:
        name = str(im.get("file_name"))
        if name not in present and ("/" not in name or not (image_dir / name).is_file()):
            absent.append(im.get("file_name"))
    return absent


def _check_images(json_path: Path, image_dir: Path, images: list[dict]) -> int:
    """Read and decode up to SIZE_SAMPLE images spread over the split: the file must decode whole, its
    size be the json's and its EXIF orientation none or 1. Returns how many were read."""
    from PIL import Image, UnidentifiedImageError

    step = max(1, len(images) // SIZE_SAMPLE)
    sample = images[::step][:SIZE_SAMPLE]
    for im in sample:
        path = image_dir / str(im.get("file_name"))
        try:
            with Image.open(path) as f:
                size, orientation = f.size, f.getexif().get(EXIF_ORIENTATION, 1)
                f.load()  # the whole file: a truncated one decodes partly with OpenCV (mmdet), not with PIL
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            raise DataError(f"{json_path}: image id {im.get('id')} ({path}): cannot decode it: {e}") from None
        if size != (im.get("width"), im.get("height")):
            raise DataError(
                f"{json_path}: image id {im.get('id')} ({path}): the file is {size[0]}x{size[1]}, the json "
                "says "
                f"{im.get('width')}x{im.get('height')} (width x height); the masks would not lie on the "
                "objects"
            )
        if orientation != 1:
            raise DataError(
                f"{json_path}: image id {im.get('id')} ({path}): EXIF orientation {orientation} (expected "
                "none or 1): "
                "detectron2 and mmdet would rotate it, the reference and torchvision would not; "
                "store the pixels upright and drop the tag (e.g. `mogrify -auto-orient`)"
            )
    return len(sample)


CHECK_VERSION = 2  # bumped whenever what the pass checks or records changes (the cache is keyed by it)


def _stamp(json_path: Path, image_dir: Path, need_annotations: bool) -> str:
    """What the pass's verdict depends on: the file (path, size, modification time), the image folder's
    modification time (a file added or removed changes it), the checks' settings."""
    st, folder = json_path.stat(), image_dir.stat()
    return hashlib.sha1(
        f"{json_path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{image_dir.resolve()}:{folder.st_mtime_ns}:"
        f"{need_annotations}:{MAX_DROPPED_SHARE}:{SIZE_SAMPLE}:{CHECK_VERSION}".encode()
    ).hexdigest()[:16]


def inspect_split(
    json_path: Path, image_dir: Path, need_annotations: bool = True, train: bool = False
) -> tuple[dict, Path]:
    """Validate one COCO split in one parse; returns (its summary, the annotation file the frameworks
    are to read: ``json_path``, or its cleaned copy). A training split's index is registered. The
    verdict of a split that passed is kept (data cache, ``checked/``) under its :func:`_stamp`: a later
    command on the same files reads it instead of parsing the file again."""
    if not json_path.is_file():
        raise DataError(f"{json_path}: annotation file not found")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found (listed by {json_path})")
    cache = default_cache_dir().parent / "checked" / _stamp(json_path, image_dir, need_annotations)
    try:
        kept = json.loads((cache / "verdict.json").read_text())
        if Path(kept["read_from"]).is_file():
            if train:
                _INDEX[kept["read_from"]] = kept["index"]
            return kept["summary"], Path(kept["read_from"])
    except (OSError, ValueError, KeyError):
        pass  # not checked yet (or the cache is unreadable): check now
    with _collector_paused():
        return _check(json_path, image_dir, need_annotations, train, cache)


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while the pass builds and walks millions of objects (COCO's
    train2017: 860k annotations): none of them is garbage, but every 700 allocations it would scan the
    young ones and, as they pile up, the old ones again: the parse takes 2-3 times as long with it on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _check(
    json_path: Path, image_dir: Path, need_annotations: bool, train: bool, cache: Path
) -> tuple[dict, Path]:
    import orjson

    from ..records.results import atomic_write_text

    coco = _read(json_path)
    if not coco["images"]:
        raise DataError(f"{json_path}: key 'images' is empty")
    if not coco["categories"]:
        raise DataError(f"{json_path}: key 'categories' is empty")
    if need_annotations and not coco["annotations"]:
        raise DataError(f"{json_path}: key 'annotations' is empty: nothing to train on")
    for im in coco["images"]:
        why = _bad_image_entry(im)
        if why:
            shown = f"image id {im.get('id')!r}" if isinstance(im, dict) else f"entry {im!r}"
            raise DataError(f"{json_path}: key 'images', {shown}: {why}")
    for c in coco["categories"]:
        if not isinstance(c, dict) or type(c.get("id")) is not int or not isinstance(c.get("name"), str):
            raise DataError(
                f"{json_path}: key 'categories', entry {c!r}: expected an object with a whole-number 'id' "
                "and a "
                "'name'"
            )
    for what in ("images", "categories"):
        twice = _duplicate(coco[what], what)
        if twice:
            raise DataError(f"{json_path}: {twice}")
    missing = _absent(image_dir, coco["images"])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(
            f"{json_path}: {len(missing)} image(s) listed under 'images' are absent from {image_dir}: {shown}"
        )
    dropped, cleaned = _check_annotations(json_path, coco)
    summary = {
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "categories": len(coco["categories"]),
        "headers_checked": _check_images(json_path, image_dir, coco["images"]),
    }
    read_from = json_path
    if cleaned is not None:
        summary["dropped"] = dropped
        read_from = cache / json_path.name
        atomic_write_text(read_from, orjson.dumps(cleaned).decode())
        coco = cleaned
    index = _index(coco)
    summary["usable_images"] = len(index["usable"])
    if train and not index["usable"]:
        raise DataError(
            f"{json_path}: no image to train on: every image lacks a usable annotation that is not a crowd "
            f"region, or has a side under {MIN_SIDE} px (mmdet's minimum)"
        )
    if train:
        _INDEX[str(read_from)] = index
    atomic_write_text(
        cache / "verdict.json", json.dumps({"summary": summary, "read_from": str(read_from), "index": index})
    )
    return summary, read_from


def enough_for_a_batch(json_path, split_summary: dict, batch: int) -> None:
    """Refuse a training split with fewer usable images than one batch (every loader needs a batch; the
    reference's refuses it, the others repeat images)."""
    usable = split_summary.get("usable_images")
    if usable is not None and usable < batch:
        raise DataError(
            f"{json_path}: {usable} image(s) to train on (with an annotation that is not a crowd region, "
            "sides of "
            f"{MIN_SIDE} px or more), fewer than one batch of {batch} (solver.ims_per_batch)"
        )
