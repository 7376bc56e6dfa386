"""What `mrcnn-bench parity` checks, in its four modes: the effective hyperparameters side by side
(static), one batch through every implementation (``--check-forward``), one training step of every
implementation against the reference's (``--check-step``, harness/parity/step_check.py), and what the
implementations of one run did (``--run``). Each returns (Markdown text, whether it found nothing wrong);
input that
cannot be checked is a ``suite.RequestError``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..config.schema import load_config, resolve_config_path
from ..parity.step_check import FLOOR_FACTOR
from ..tasks import task_of
from .suite import RequestError, each_installed, interpreters, say, shared_weights


def parity_command(
    config_name, impl, data_root, pythons, run_dir, band, check_forward, check_step, keep
) -> tuple[str, bool]:
    """`mrcnn-bench parity`: one of its four checks (below); its text and whether it found nothing
    wrong."""
    if sum(map(bool, (run_dir, check_forward, check_step))) > 1:
        raise RequestError("--run, --check-forward and --check-step are separate checks: give one")
    python = interpreters(pythons)
    if run_dir:
        return trajectory_parity(run_dir, band)
    if check_step:
        return step_parity(config_name, impl, data_root, python, keep)
    if check_forward:
        return forward_parity(config_name, impl, data_root, python)
    return static_parity(config_name, impl, data_root, python)


def static_parity(config_name: str, impl: str, data_root: str | None, interpreters: dict) -> tuple[str, bool]:
    """The canonical values and each installed implementation's effective ones, ✗ where they differ."""
    from ..parity.compare import canonical_values, effective_for, parity_frame

    cfg = load_config(resolve_config_path(config_name))
    effective, failed = each_installed(
        impl, interpreters, lambda name, python: effective_for(name, python, cfg, data_root)
    )
    from ..data.datasets import DataPaths, num_classes

    # the classes every adapter builds: model.num_classes, else the data set's, else COCO's 80
    paths = DataPaths.from_root(data_root, cfg.data.train_split, cfg.data.val_split) if data_root else None
    table, notes = parity_frame(canonical_values(cfg, num_classes(cfg, paths)), effective)
    parts = [table.to_markdown(index=False, disable_numparse=True)]
    if "reference" in effective:  # its levers: the same model and work, so settings rather than divergences
        parts.append(
            '\nThe reference\'s speed settings (the same arithmetic and work; docs/results.md, "Levers"): '
            + ", ".join(f"reference.{k}={v}" for k, v in cfg.reference.model_dump().items())
        )
    parts.append("\n" + settings_text(cfg.benchmark.device, cfg.benchmark.task))
    if notes:
        parts.append("\nDivergences (✗):\n" + "\n".join(f"- {note}" for note in notes))
    return "\n".join(parts), not failed and not any(n.endswith("UNEXPLAINED") for n in notes)


def settings_text(device: str, task: str) -> str:
    """What --best applies to each implementation on ``device`` for ``task``, and what it leaves out and
    why."""
    import pandas as pd

    from ..config.settings import NOT_INCLUDED, table

    rows = pd.DataFrame(table(device, task)).to_markdown(index=False, disable_numparse=True)
    left = "\n".join(f"- {name}: {why}" for name, why in NOT_INCLUDED)
    return (
        f"Each at its best (`run --best`; config/settings.py), on {device} for --task {task}:\n\n{rows}\n\n"
        f"Not among them:\n{left}"
    )


def forward_parity(
    config_name: str, impl: str, data_root: str | None, interpreters: dict
) -> tuple[str, bool]:
    """One batch of the run's data order through each implementation from the shared initial weights:
    FPN features and RPN head outputs against the first one's."""
    import torch

    from ..data.datasets import resolve_data
    from ..parity.compare import FORWARD_RTOL, check_images, forward_for, forward_frame

    cfg = load_config(resolve_config_path(config_name))
    paths, _ = resolve_data(cfg.data, data_root)
    cfg = shared_weights(cfg, paths)
    images = check_images(cfg, paths.train_json, paths.train_images)
    with tempfile.TemporaryDirectory(prefix="mrcnn-bench-forward-") as tmp:
        torch.save(images, Path(tmp) / "images.pt")

        def forward(name, python):
            say(f"{name}: forward on {tuple(images.shape)} ...")
            return forward_for(name, python, cfg, Path(tmp) / "images.pt", Path(tmp) / f"{name}.pt")

        outputs, failed = each_installed(impl, interpreters, forward)
    if not outputs:
        raise RequestError("no implementation could run the forward check")
    table, problems = forward_frame(outputs)
    base = next(iter(outputs))
    text = (
        f"one batch of {images.shape[0]} images ({'x'.join(map(str, images.shape[-2:]))} padded) from the "
        "run's data "
        "order, the shared initial weights, training mode: each implementation's FPN features and RPN head "
        "outputs, "
        f"as max |difference from {base}| / max |{base}| (tolerance {FORWARD_RTOL:g})\n\n"
        + table.to_markdown(index=False, disable_numparse=True)
        + "".join(f"\n- {p}" for p in problems)
    )
    return text, not problems and not failed


def trajectory_parity(run_dir: str, band: float | None) -> tuple[str, bool]:
    """Each implementation of one run: its lr against the canonical schedule, its global batch, and its
    work per image over the timed window against the others'."""
    from ..parity.compare import PIXELS_RTOL, POSITIVES_BAND, trajectory_frame
    from ..records.frames import load_runs

    records = load_runs([run_dir])
    if not records:
        raise RequestError(f"{run_dir}: no run.json under it (a folder made by mrcnn-bench run)")
    run_ids = sorted({r["run_id"] for r in records})
    if len(run_ids) > 1:
        raise RequestError(f"{run_dir}: holds runs {', '.join(run_ids)}; --run takes the folder of one run")
    if not any(task_of(_task(r)).trains for r in records):
        raise RequestError(
            f"{run_dir}: an inference run (--task {_task(records[0])}), which does not train; --run checks "
            "what "
            "training runs did (the inference runs' own check is the detections per image beside their "
            "latency)"
        )
    band = band or POSITIVES_BAND
    table, problems = trajectory_frame(records, band)
    text = (
        f"run {run_ids[0]}: lr against the canonical schedule (relative tolerance 1e-6), global batch, work "
        "per "
        f"image over the timed window (positives within ±{100 * band:.0f}% of the median, padded pixels "
        "within "
        f"±{100 * PIXELS_RTOL:.1f}% of the lower median)\n\n"
        + table.to_markdown(index=False, disable_numparse=True)
    )
    if problems:
        return text + "\n\nDivergences:" + "".join(f"\n- {p}" for p in problems), False
    return text + "\n\nno divergence", True


def _task(record: dict) -> str:
    return ((record.get("config") or {}).get("benchmark") or {}).get("task", "train")


def step_parity(
    config_name: str, impl: str, data_root: str | None, interpreters: dict, keep: str | None = None
) -> tuple[str, bool]:
    """One training step of each implementation from the shared initial weights on the same batch
    (parity/step_check.py), against the reference's: losses, gradients per module, the optimizer's groups,
    the step's work; with torchvision, the reference again with torchvision's values of its divergent keys.
    ``keep``: a folder for the check's data and runs (default: a temporary one, removed)."""
    import shutil

    from ..data.datasets import resolve_data
    from ..parity.step_check import step_overrides, write_step_batch
    from .suite import parse_impls

    if "reference" not in parse_impls(impl):
        raise RequestError(
            f"--check-step compares every implementation with the reference: --impl {impl} leaves it out"
        )
    cfg = load_config(resolve_config_path(config_name))
    paths, _ = resolve_data(cfg.data, data_root)
    cfg = shared_weights(
        cfg, paths
    )  # calibrated on the run's own data, before the config points at the check's batch
    work_dir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="mrcnn-bench-step-"))
    try:
        ids = write_step_batch(cfg, paths.train_json, paths.train_images, work_dir / "data")
        say(f"the step's batch: images {ids} of the run's data order, resized once, in {work_dir / 'data'}")
        step_cfg = cfg.with_overrides(step_overrides(work_dir / "data"), source="--check-step")
        pairs, floor, failed = _step_runs(step_cfg, impl, interpreters, work_dir)
        return _step_report(ids, pairs, floor, failed)
    finally:
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)


def _step_runs(step_cfg, impl: str, interpreters: dict, work_dir: Path):
    """The check's runs: each implementation's step, the reference's with its input moved by rounding (the
    noise floor), and with torchvision the reference's with torchvision's values of its divergent keys.
    ([(title, {name: record}, {name: declared keys})], the floor's distances, [failures])."""
    from mrcnn_bench.adapters import get_adapter

    from ..parity.compare import effective_for
    from ..parity.step_check import floor_distances
    from .launch import LaunchOptions, interpreter_for
    from .suite import run_suite

    opts = LaunchOptions(nproc_per_node=1, force=True, interpreters=interpreters)

    def one(cfg, names, run_id):
        return run_suite(cfg, names, opts, run_id, work_dir / "runs", None)[1]

    records = one(step_cfg, impl, "step")
    ok_runs = {r["impl"]: r for r in records if r["status"] == "ok"}
    failed = [f"{r['impl']}: {r['status']}: {r.get('reason')}" for r in records if r["status"] != "ok"]
    if "reference" not in ok_runs:
        raise RequestError("--check-step: the reference's step failed: " + "; ".join(failed))
    fold = not step_cfg.reference.fold_frozen_bn
    say(
        "the reference again, rounded otherwise (its input moved by one unit in the last place, "
        "reference.fold_frozen_bn "
        f"{fold}): the noise floor of the comparison"
    )
    moved = one(
        step_cfg.with_overrides(
            {"benchmark.step_input_ulps": 1, "reference.fold_frozen_bn": fold},
            source="--check-step's noise floor",
        ),
        "reference",
        "step-floor",
    )[0]
    if moved["status"] != "ok":
        raise RequestError(
            f"--check-step: the reference's step with a moved input failed: {moved.get('reason')}"
        )
    floor = floor_distances(_step_of(ok_runs["reference"]), _step_of(moved))
    declared = {name: set(get_adapter(name).divergences(step_cfg)) for name in ok_runs}
    pairs = [("the config's step", ok_runs, declared)]
    if "torchvision" in ok_runs and declared["torchvision"]:
        keys = sorted(declared["torchvision"])
        theirs = effective_for(
            "torchvision", interpreter_for("torchvision", interpreters), step_cfg, str(work_dir / "data")
        )
        say("the reference again with torchvision's values of " + ", ".join(f"{k}={theirs[k]}" for k in keys))
        again = one(
            step_cfg.with_overrides({k: theirs[k] for k in keys}, source="torchvision's values"),
            "reference",
            "step-as-torchvision",
        )[0]
        if again["status"] != "ok":
            failed.append(f"reference with torchvision's values: {again['status']}: {again.get('reason')}")
        else:
            pairs.append(
                (
                    f"with torchvision's values ({', '.join(f'{k} {theirs[k]}' for k in keys)})",
                    {"reference": again, "torchvision": ok_runs["torchvision"]},
                    {},
                )
            )
    return pairs, floor, failed


def _step_report(ids: list[int], pairs: list, floor: dict, failed: list[str]) -> tuple[str, bool]:
    """The check's text (a section per comparison: losses, gradients, work) and whether it found nothing
    wrong."""
    from ..parity.step_check import compare_steps, work_table
    from ..records.frames import iterations_of

    parts = [
        f"one training step of each implementation from the shared initial weights on images {ids} of the "
        "run's "
        "data order (resized once; every RoI candidate taken; the RPN's anchors drawn by one fixed "
        "permutation); each "
        f"against the reference's, within the larger of float rounding and {FLOOR_FACTOR:g} x the 'floor' "
        "(the "
        "reference's own step rounded otherwise: its input moved by one unit in the last place, its "
        "FrozenBN folded "
        f"the other way)"
    ]
    problems = [f"failed: {f}" for f in failed]
    for title, runs, excuses in pairs:
        steps = {n: _step_of(r) for n, r in runs.items()}
        work = {n: (iterations_of(r) or [{}])[0] for n, r in runs.items()}
        losses, grads, found, notes = compare_steps(steps, work, "reference", excuses, floor)
        parts += [
            f"\n#### {title}\n",
            "Loss terms (value, and its distance from the reference's):\n",
            losses.to_markdown(index=False, disable_numparse=True),
            "\nGradients per module (the reference's norm; the others' ||difference|| / ||reference||):\n",
            grads.to_markdown(index=False, disable_numparse=True),
            "\nThe step's work:\n",
            work_table(work).to_markdown(index=False, disable_numparse=True),
        ]
        parts += [f"- {n}" for n in notes]
        parts += [f"- declared: {n}: {', '.join(sorted(keys))}" for n, keys in excuses.items() if keys]
        problems += [f"{title}: {p}" for p in found]
    text = "\n".join(parts) + (
        "\n\nDivergences:\n" + "\n".join(f"- {p}" for p in problems) if problems else "\n\nno divergence"
    )
    return text, not problems


def _step_of(record: dict) -> dict:
    """The step.pt a step run wrote beside its run.json."""
    import torch

    from ..tasks.step import STEP_FILE

    return torch.load(Path(record["_path"]).parent / STEP_FILE, weights_only=True)
