"""``--task eval``: the same training, then the trained model through the framework's own eval path on
the val split, scored by pycocotools (bbox and segm AP, AP50), with detections and masks per image."""

from __future__ import annotations

from .base import RankContext, one_process, val_split
from .rank import say
from .train import Train

# Every implementation's AP50 (0-100 scale), bbox and segm alike, must lie within this many points of the
# four's median (docs/inference.md). AP50, not AP over IoU 0.50:0.95: on 128-px images the
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
        from mrcnn_bench.harness.engine.inference import evaluate

        data = rank.data
        say(f"{rank.impl}: evaluating on {data.val_json}")
        predict = rank.adapter.predictor(rank.cfg, data, rank.dist, model=rank.adapter.trained_model)
        result = evaluate(predict, data.val_json, data.val_images)
        say(
            f"{rank.impl}: bbox AP {result['bbox']['AP']:.4f} (AP50 {result['bbox']['AP50']:.4f}), segm AP "
            f"{result['segm']['AP']:.4f} (AP50 {result['segm']['AP50']:.4f}), "
            f"{result['detections_per_image']:.1f} "
            "detections per image"
        )
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
    image, and its distance from the median AP50 (``AP_BAND``); None without such runs. Runs of several
    seeds (``benchmark.seed``): a row per implementation and seed, then per implementation the mean over
    the seeds, on which the band is judged (an implementation that failed at a seed has no mean: it is
    outside, with the seed and why)."""
    import pandas as pd
    from mrcnn_bench.harness.records.metrics import show

    runs = df[(df["task"] == "eval") & (df["status"] == "ok") & df["accuracy"].notna()]
    if not len(runs):
        return None
    seeds = sorted(set(df.loc[df["task"] == "eval", "seed"])) if "seed" in df else [0]
    if len(seeds) > 1:
        return _accuracy_over_seeds(df[df["task"] == "eval"], runs, seeds)
    off = ap50_offsets(list(runs["accuracy"]))
    return pd.DataFrame(
        {
            "Implementation": runs["impl"],
            "Throughput (img/s)": [show("images_per_s", v) for v in runs["images_per_s"]],
            "bbox AP / AP50": [_ap(a, "bbox") for a in runs["accuracy"]],
            "segm AP / AP50": [_ap(a, "segm") for a in runs["accuracy"]],
            "Detections/img": runs["accuracy"].map(lambda a: f"{a['detections_per_image']:.1f}"),
            f"Within {AP_BAND} AP50 of the median": ["yes" if o <= AP_BAND else f"no ({o:.1f})" for o in off],
        }
    ).reset_index(drop=True)


def _ap(a: dict, kind: str) -> str:
    return f"{100 * a[kind]['AP']:.1f} / {100 * a[kind]['AP50']:.1f}"


def mean_accuracy(accuracies: list[dict]) -> dict:
    """The mean over seeds of bbox and segm AP and AP50, and of the detections per image."""
    import statistics

    out = {
        kind: {k: statistics.fmean(a[kind][k] for a in accuracies) for k in ("AP", "AP50")}
        for kind in ("bbox", "segm")
    }
    out["detections_per_image"] = statistics.fmean(a["detections_per_image"] for a in accuracies)
    return out


def _accuracy_over_seeds(evals, runs, seeds: list[int]):
    """accuracy_table's rows for several seeds: each run, then each implementation's mean, judged."""
    import pandas as pd

    rows, means = [], {}
    for impl in dict.fromkeys(evals["impl"]):
        mine = runs[runs["impl"] == impl].sort_values("seed")
        for seed, a in zip(mine["seed"], mine["accuracy"]):
            rows.append(
                {
                    "Implementation": impl,
                    "Seed": str(seed),
                    "bbox AP / AP50": _ap(a, "bbox"),
                    "segm AP / AP50": _ap(a, "segm"),
                    "Detections/img": f"{a['detections_per_image']:.1f}",
                }
            )
        failed = evals[(evals["impl"] == impl) & (evals["status"] != "ok")]
        if len(failed):
            why = "; ".join(f"seed {s}: {_short(r)}" for s, r in zip(failed["seed"], failed["reason"]))
            means[impl] = None
            rows.append(
                {
                    "Implementation": impl,
                    "Seed": f"mean of {len(seeds)}",
                    "bbox AP / AP50": "-",
                    "segm AP / AP50": "-",
                    "Detections/img": "-",
                    "verdict": f"no (failed at {why})",
                }
            )
        else:
            means[impl] = mean_accuracy(list(mine["accuracy"]))
            rows.append(
                {
                    "Implementation": impl,
                    "Seed": f"mean of {len(mine)}",
                    "bbox AP / AP50": _ap(means[impl], "bbox"),
                    "segm AP / AP50": _ap(means[impl], "segm"),
                    "Detections/img": f"{means[impl]['detections_per_image']:.1f}",
                }
            )
    judged = {impl: m for impl, m in means.items() if m is not None}
    offsets = dict(zip(judged, ap50_offsets(list(judged.values())))) if judged else {}
    column = f"Within {AP_BAND} AP50 of the median (of the means)"
    for row in rows:
        if row["Seed"].startswith("mean"):
            o = offsets.get(row["Implementation"])
            row[column] = row.pop("verdict", None) or ("yes" if o <= AP_BAND else f"no ({o:.1f})")
        else:
            row[column] = ""
    return pd.DataFrame(rows)


def _short(reason) -> str:
    """A failed run's reason in a table cell: without the rank and the exception's name, its first clause."""
    import re

    text = re.sub(r"^(rank \d+: )?(\w+(Error|Exception): )?", "", str(reason or "failed"))
    return text.split(": ")[0][:70]
