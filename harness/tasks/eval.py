"""``--task eval``: the same training, then the trained model through the framework's own eval path on
the val split, scored by pycocotools (bbox and segm AP, AP50), with detections and masks per image."""
from __future__ import annotations

from . import RankContext, one_process, val_split
from .rank import say
from .train import Train

# Every implementation's AP50 (0-100 scale), bbox and segm alike, must lie within this many points of the
# four's median (README, "Inference and accuracy"). AP50, not AP over IoU 0.50:0.95: on 128-px images the
# higher thresholds turn on sub-pixel placement, where RoIAlign's half-pixel alignment (torchvision's is
# unaligned) moves AP by up to 2 points for the same weights while AP50 moves by 0.6.
AP_BAND = 1.5


class Eval(Train):
    name = "eval"
    help = "eval: train, then bbox and segm AP on the val split"
    readme_section = "accuracy"
    section_title = "Accuracy (pycocotools on the val split, after the same schedule)"

    def check(self, cfg, data_summary: dict) -> None:
        one_process(cfg)
        val_split(cfg, data_summary)

    def work(self, bench) -> str:
        return f"{bench.iters} iterations, then AP on the val split"

    def after_training(self, rank: RankContext) -> dict:
        from mrcnn_bench.harness.inference import evaluate

        data = rank.data
        say(f"{rank.impl}: evaluating on {data.val_json}")
        predict = rank.adapter.predictor(rank.cfg, data, rank.dist, model=rank.adapter.trained_model)
        result = evaluate(predict, data.val_json, data.val_images)
        say(f"{rank.impl}: bbox AP {result['bbox']['AP']:.4f} (AP50 {result['bbox']['AP50']:.4f}), segm AP "
            f"{result['segm']['AP']:.4f} (AP50 {result['segm']['AP50']:.4f}), {result['detections_per_image']:.1f} "
            "detections per image")
        return {"accuracy": result}

    def section(self, df):
        return accuracy_table(df)

    def compact(self, df):
        return accuracy_table(df)


def ap50_offsets(accuracies: list[dict]) -> list[float]:
    """Each result's larger distance, bbox or segm, from the median AP50 of all (0-100 scale)."""
    import numpy as np

    def column(kind):
        values = np.array([100 * a[kind]["AP50"] for a in accuracies])
        return np.abs(values - np.median(values))

    return list(np.maximum(column("bbox"), column("segm")))


def accuracy_table(df):
    """Per implementation its img/s over the window, bbox and segm AP and AP50 (0-100), detections per
    image, and its distance from the median AP50 (``AP_BAND``); None without such runs."""
    import pandas as pd

    from mrcnn_bench.harness.metrics import show

    runs = df[(df["task"] == "eval") & (df["status"] == "ok") & df["accuracy"].notna()]
    if not len(runs):
        return None
    off = ap50_offsets(list(runs["accuracy"]))
    return pd.DataFrame({
        "Implementation": runs["impl"],
        "Throughput (img/s)": [show("images_per_s", v) for v in runs["images_per_s"]],
        "bbox AP / AP50": [f"{100 * a['bbox']['AP']:.1f} / {100 * a['bbox']['AP50']:.1f}" for a in runs["accuracy"]],
        "segm AP / AP50": [f"{100 * a['segm']['AP']:.1f} / {100 * a['segm']['AP50']:.1f}" for a in runs["accuracy"]],
        "Detections/img": runs["accuracy"].map(lambda a: f"{a['detections_per_image']:.1f}"),
        f"Within {AP_BAND} AP50 of the median": ["yes" if o <= AP_BAND else f"no ({o:.1f})" for o in off],
    }).reset_index(drop=True)
