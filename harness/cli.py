"""The ``mrcnn-bench`` command line.

Exit codes: 0 success; 1 a benchmark ran but an implementation failed (or a regression was found);
2 bad input (config, data, arguments, an implementation that is not installed), nothing started.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .config import ConfigError, load_config, parse_override, resolve_config_path
from .data import DataError


CANONICAL = "mask_rcnn_R_50_FPN_noaug_1x"  # the default config where CUDA is visible


class BadInput(click.ClickException):
    exit_code = 2


def _bad_input(fn):
    """Turn the harness's own input errors into exit code 2 with the message, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .launch import LaunchError
        from .results import ResultError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, ResultError, LaunchError) as e:
            raise BadInput(str(e)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mrcnn-bench")
def main():
    """Train Mask R-CNN R-50-FPN in several implementations on identical hyperparameters and compare
    their training throughput."""


# ---------------------------------------------------------------------------------------- data
@main.group()
def data():
    """Data sets."""


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--images", default=64, show_default=True, type=click.IntRange(min=1), help="Training images.")
@click.option("--val-images", default=None, type=click.IntRange(min=1), help="Validation images [images/4, at least 4].")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=32), help="Images' long side in pixels.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--categories", default=80, show_default=True, type=click.IntRange(1, 80), help="COCO's first N categories.")
@_bad_input
def data_synth(out, images, val_images, size, seed, categories):
    """Write a deterministic synthetic COCO-format data set (train2017 + val2017) shaped like COCO."""
    from .data import make_synthetic

    paths = make_synthetic(out, images=images, size=size, seed=seed, val_images=val_images, categories=categories)
    for split in ("train", "val"):
        coco = json.loads(getattr(paths, f"{split}_json").read_text())
        click.echo(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} instances -> {getattr(paths, f'{split}_json')}")


# ----------------------------------------------------------------------------------------- run
def _parse_impls(text: str) -> list[str]:
    from mrcnn_bench.adapters import adapter_names

    known = adapter_names()
    if text == "all":
        return known
    impls = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [i for i in impls if i not in known]
    if unknown:
        raise BadInput(f"--impl: unknown implementation(s) {', '.join(unknown)}; known: {', '.join(known)}, or 'all'")
    return impls


def _run_options(fn):
    """The options `run` and `sweep` share."""
    for decorator in reversed([
        click.option("--impl", default="torchvision", show_default=True, help="Comma-separated implementations, or 'all' (those installed)."),
        click.option("--config", "config_name", default=None,
                     help=f"A config file, or the name of one in configs/ [{CANONICAL} when CUDA is visible, else cpu_small]."),
        click.option("--ims-per-gpu", type=click.IntRange(min=1), default=None,
                     help="Weak scaling: images per process; the global batch is this x processes and the learning rate "
                          "scales with it [strong scaling: the config's global batch split over the processes]."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="[config benchmark.device]"),
        click.option("--data", "data_root", default=None, type=click.Path(), help="COCO root (annotations/, train2017/); default: synthetic."),
        click.option("--out", "out_root", default="results/runs", show_default=True, type=click.Path(file_okay=False)),
        click.option("--run-id", default=None, help="Folder name under --out [a new timestamped id]."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. benchmark.iters=20."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per process [cores / processes]."),
        click.option("--timeout", type=float, default=None, help="Seconds per implementation [config benchmark.timeout_s]."),
        click.option("--force", is_flag=True, help="Overwrite existing results of the same run id."),
        click.option("--python", "pythons", multiple=True, metavar="IMPL=PATH", help="Interpreter for an implementation (its own venv)."),
    ]):
        fn = decorator(fn)
    return fn


@main.command()
@_run_options
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Processes per node [config benchmark.gpus].")
@click.option("--launcher", type=click.Choice(["torchrun", "slurm"]), default="torchrun", show_default=True,
              help="slurm: each `srun` task is one process; rank, world size and master address come from SLURM.")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default=None, help="Node 0's address (needed with --nnodes > 1).")
@click.option("--master-port", type=int, default=None)
@click.option("--rdzv-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds the nodes wait for each other at start.")
@_bad_input
def run(impl, config_name, ims_per_gpu, device, data_root, out_root, run_id, overrides, threads, timeout, force, pythons,
        gpus, launcher, nnodes, node_rank, master_addr, master_port, rdzv_timeout):
    """Train each implementation and time iterations [warmup, end); writes OUT/<run-id>/<impl>/run.json."""
    from . import launch

    slurm = None
    if launcher == "slurm":
        slurm = launch.slurm_task(master_port=master_port)
        gpus, nnodes, node_rank = slurm.local_world, slurm.nnodes, slurm.rank // slurm.local_world
    elif nnodes > 1 and not master_addr:
        raise BadInput(f"--nnodes {nnodes}: --master-addr is required (node 0's address, the same on every node)")
    if node_rank >= nnodes:
        raise BadInput(f"--node-rank {node_rank} is out of range for --nnodes {nnodes} (0 to {nnodes - 1})")
    cfg = _scaled_config(_default_config(config_name), _values(overrides, device, timeout),
                         gpus * nnodes if gpus is not None else None, ims_per_gpu)
    nproc = cfg.benchmark.gpus // nnodes
    if nproc * nnodes != cfg.benchmark.gpus:
        raise BadInput(f"benchmark.gpus={cfg.benchmark.gpus} is not divisible by --nnodes {nnodes}")
    opts = launch.LaunchOptions(
        nproc_per_node=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port,
        threads_per_rank=threads, timeout_s=timeout, force=force, interpreters=_interpreters(pythons),
        rdzv_timeout_s=rdzv_timeout, slurm=slurm,
    )
    run_dir, records = _run_suite(cfg, impl, opts, run_id, out_root, data_root)
    if not opts.leader:
        failed = [r for r in records if r["status"] != "ok"]
        click.echo(f"\nthis {'task' if slurm else 'node'} is done; the results are written by "
                   f"{'task' if slurm else 'node'} 0 under {run_dir}"
                   + "".join(f"\n{r['impl']}: {r['status']}: {r['reason']}" for r in failed))
        sys.exit(1 if failed else 0)
    from .report import render_markdown

    click.echo(f"\nresults: {run_dir}\n")
    click.echo(render_markdown(records, detail=False))
    sys.exit(0 if all(r["status"] == "ok" for r in records) else 1)


@main.command()
@_run_options
@click.option("--gpus", "gpu_counts", required=True, help="Process counts of the series, e.g. 1,2,4,8 (one node).")
@_bad_input
def sweep(impl, config_name, ims_per_gpu, device, data_root, out_root, run_id, overrides, threads, timeout, force, pythons,
          gpu_counts):
    """Run the benchmark at each process count of --gpus (strong scaling, or weak with --ims-per-gpu)
    and print the scaling table; runs go to OUT/<run-id>-g<N>/."""
    from . import launch
    from .report import render_markdown
    from .results import new_run_id

    try:
        counts = sorted({int(n) for n in gpu_counts.split(",") if n.strip()})
    except ValueError:
        raise BadInput(f"--gpus {gpu_counts!r}: expected process counts such as 1,2,4,8") from None
    if not counts or counts[0] < 1:
        raise BadInput(f"--gpus {gpu_counts!r}: expected process counts of at least 1")
    config_name = _default_config(config_name)
    values = _values(overrides, device, timeout)
    # every point of the series is checked before the first one runs
    configs = {n: _scaled_config(config_name, values, n, ims_per_gpu) for n in counts}
    base_id = run_id or new_run_id()
    records = []
    for n, cfg in configs.items():
        click.echo(f"== sweep: {n} process(es)", err=True)
        opts = launch.LaunchOptions(nproc_per_node=n, threads_per_rank=threads, timeout_s=timeout, force=force,
                                    interpreters=_interpreters(pythons))
        records += _run_suite(cfg, impl, opts, f"{base_id}-g{n}", out_root, data_root)[1]
    click.echo(f"\nresults: {Path(out_root)}/{base_id}-g{{{','.join(map(str, counts))}}}\n")
    click.echo(render_markdown(records))
    sys.exit(0 if all(r["status"] == "ok" for r in records) else 1)


def _values(overrides, device, timeout) -> dict:
    values = dict(parse_override(o) for o in overrides)
    if device is not None:
        values["benchmark.device"] = device
    if timeout is not None:
        values["benchmark.timeout_s"] = timeout
    return values


def _interpreters(pythons) -> dict[str, str]:
    interpreters = {}
    for p in pythons:
        name, sep, path = p.partition("=")
        if not sep:
            raise BadInput(f"--python {p!r}: expected IMPL=PATH")
        interpreters[name] = path
    return interpreters


def _run_suite(cfg, impl_text: str, opts, run_id, out_root, data_root):
    """Probe, resume, data, shared weights, then every implementation in turn: (run folder, records)."""
    from . import launch
    from .data import resolve_data
    from .results import new_run_id

    impls = _parse_impls(impl_text)
    if cfg.benchmark.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BadInput("--device cuda: no CUDA device is visible to this process (use --device cpu)")
        local = opts.slurm.local_world if opts.slurm else opts.nproc_per_node
        if torch.cuda.device_count() < local:
            raise BadInput(f"--gpus {local}: only {torch.cuda.device_count()} CUDA device(s) visible")
    # Which implementations can run: an unavailable one named explicitly is an input error;
    # with 'all' it is skipped and said so.
    runnable = []
    for name in impls:
        ok, info = launch.probe(name, launch.interpreter_for(name, opts.interpreters))
        if ok:
            runnable.append(name)
            click.echo(f"{name}: available ({info})", err=True)
        elif impl_text == "all":
            click.echo(f"{name}: skipped, not installed: {info}", err=True)
        else:
            raise BadInput(f"--impl {name}: {info}")
    if not runnable:
        raise BadInput("no implementation is installed")
    run_id = run_id or new_run_id()
    run_dir = Path(out_root) / run_id
    todo = launch.plan_resume(run_dir, runnable, opts.force)
    kept = [i for i in runnable if i not in todo]
    if kept:
        click.echo(f"resuming run {run_id}: keeping the finished results of {', '.join(kept)} (--force re-runs them)", err=True)

    paths, summary = resolve_data(cfg.data, data_root)
    click.echo(f"data: {summary['kind']} at {paths.root} ({summary['train']['images']} training images)", err=True)
    cfg = _with_shared_init(cfg, paths)
    try:
        records = launch.run_suite(cfg, todo, paths, summary, Path(out_root), run_id, opts)
    except launch.KeyboardInterruptWithRecord as e:
        click.echo(f"interrupted: {e.record['impl']} marked interrupted; finished results are intact; "
                   f"re-run with --run-id {run_id} to resume", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(f"interrupted between implementations; finished results are intact; re-run with --run-id {run_id} to resume", err=True)
        sys.exit(130)
    from .results import load_run

    return run_dir, [load_run(run_dir / i) for i in kept] + records


def _default_config(name: str | None) -> str:
    """--config as given; else the canonical config where CUDA is visible and cpu_small elsewhere,
    said on the first line of output."""
    if name is not None:
        return name
    import torch

    if torch.cuda.is_available():
        name, why = CANONICAL, f"{torch.cuda.device_count()} CUDA device(s) visible"
    else:
        name, why = "cpu_small", f"no CUDA device visible; --config {CANONICAL} is the canonical benchmark"
    click.echo(f"config: {name} ({why})", err=True)
    return name


def _scaled_config(config_name: str, values: dict, world: int | None, ims_per_gpu: int | None):
    """The config with its batch spread over ``world`` processes (harness/scaling.py): strong scaling,
    or weak with --ims-per-gpu. A batch that cannot be spread exits 2 with the command that can."""
    from .scaling import ScalingError, plan

    path = resolve_config_path(config_name)
    if world is None and ims_per_gpu is None:
        return load_config(path, values)
    base = load_config(path, {k: v for k, v in values.items() if k != "benchmark.gpus"})
    # an accumulation the config or --set asks for is kept; otherwise benchmark.max_ims_per_step decides
    accum = base.benchmark.grad_accum if "benchmark.grad_accum" in values or base.benchmark.grad_accum != 1 else None
    try:
        p = plan(base, world or base.benchmark.gpus, ims_per_gpu, accum)
    except ScalingError as e:
        raise BadInput(str(e)) from None
    click.echo(p.describe(), err=True)
    return load_config(path, {**values, **p.overrides()})


def _with_shared_init(cfg, paths):
    from .init_weights import WeightsError, with_shared_init

    try:
        cfg, message = with_shared_init(cfg, paths)
    except WeightsError as e:
        raise BadInput(str(e)) from None
    if message:
        click.echo(message, err=True)
    return cfg


# -------------------------------------------------------------------------------------- report
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to a file (atomically) too.")
@click.option("--plots", default=None, type=click.Path(file_okay=False), help="Write PNG plots to this folder.")
@click.option("--title", default=None, help="A Markdown heading (and a note of how the file was made) above the tables.")
@click.option("--into", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Also put the short table (repeated runs, else the summary) between the report markers of this Markdown file.")
@_bad_input
def report(paths, fmt, out, plots, title, into):
    """Tables from one or more run folders (results/runs/<id>, or any folder holding run.json files)."""
    from .report import compact_markdown, load_runs, write_into, write_report

    records = load_runs(paths)
    if into:
        try:
            write_into(Path(into), compact_markdown(records), f"mrcnn-bench report {' '.join(paths)} --into {into}")
        except ValueError as e:
            raise BadInput(f"--into: {e}") from e

    preamble = None
    if title:
        if fmt != "md":
            raise BadInput("--title goes with --format md")
        preamble = f"# {title}\n\n_Generated by `mrcnn-bench report {' '.join(paths)}`; do not edit by hand._\n\n"
    click.echo(write_report(paths, fmt, out, plots, preamble, records), nl=False)
    if plots:
        click.echo(f"plots: {plots}", err=True)


# ------------------------------------------------------------------------------------- regress
@main.command()
@click.option("--baseline", required=True, type=click.Path(exists=True), help="A run folder (or run.json) to compare against.")
@click.option("--candidate", required=True, type=click.Path(exists=True), help="The run folder (or run.json) under test.")
@click.option("--threshold", default="5%", show_default=True, help="Slowdown tolerated before failing (e.g. 5% or 0.05).")
@click.option("--alpha", default=0.01, show_default=True, type=float, help="Significance level of the Mann-Whitney U test.")
@click.option("--relative-to", "relative_to", default=None, help="Compare time ratios to this implementation measured in the same run.")
@click.option("--impl", "impls", default=None, help="Comma-separated implementations to gate [all in common].")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@_bad_input
def regress(baseline, candidate, threshold, alpha, relative_to, impls, fmt):
    """Exit 1 when the candidate is significantly slower than the baseline by more than the threshold."""
    import pandas as pd

    from .regress import parse_threshold, regress as compare

    try:
        thr = parse_threshold(threshold)
    except ValueError as e:
        raise BadInput(f"--threshold: {e}") from None
    results = compare(baseline, candidate, thr, alpha, relative_to, impls.split(",") if impls else None)
    if fmt == "json":
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        table = pd.DataFrame(
            {
                "Implementation": [r.impl for r in results],
                "baseline s/iter": [f"{r.baseline_median_s:.4g}" for r in results],
                "candidate s/iter": [f"{r.candidate_median_s:.4g}" for r in results],
                "ratio [95% CI]": [f"{r.ratio:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in results],
                "p (slower)": [f"{r.p_value:.2g}" for r in results],
                "verdict": [r.verdict for r in results],
            }
        )
        if relative_to:
            click.echo(f"times relative to {relative_to} in the same run")
        click.echo(table.to_markdown(index=False, disable_numparse=True))
    sys.exit(1 if any(r.regression for r in results) else 0)


# -------------------------------------------------------------------------------------- parity
@main.command()
@click.option("--config", "config_name", default="mask_rcnn_R_50_FPN_noaug_1x", show_default=True)
@click.option("--impl", default="all", show_default=True)
@click.option("--data", "data_root", default=None, type=click.Path(), help="Data set (for the class count).")
@click.option("--python", "pythons", multiple=True, metavar="IMPL=PATH")
@click.option("--run", "run_dir", default=None, type=click.Path(file_okay=False),
              help="Instead of the static table: check what the implementations of this run did (lr, batch, work).")
@click.option("--band", default=None, type=click.FloatRange(min=0, min_open=True),
              help="With --run: tolerated distance of positives per image from the median [0.25].")
@click.option("--check-forward", is_flag=True,
              help="Instead of the static table: feed one batch to every implementation, from the shared initial weights, "
                   "and compare their FPN features and RPN outputs.")
@_bad_input
def parity(config_name, impl, data_root, pythons, run_dir, band, check_forward):
    """The effective hyperparameters of every installed implementation, side by side; with --run, the
    trajectories of one run side by side; with --check-forward, their outputs on one batch (exit 1 on a
    divergence)."""
    if run_dir:
        _trajectory_parity(run_dir, band)
        return
    if check_forward:
        _forward_parity(config_name, impl, data_root, _interpreters(pythons))
        return
    from .parity import canonical_values, effective_for, parity_frame

    cfg = load_config(resolve_config_path(config_name))
    interpreters = _interpreters(pythons)
    effective, failed = _each_installed(impl, interpreters, lambda name, python: effective_for(name, python, cfg, data_root))
    num_classes = 80  # what every adapter builds without a data set (COCO's classes)
    if data_root:
        from .data import DataPaths

        paths = DataPaths.from_root(data_root, cfg.data.train_split, cfg.data.val_split)
        num_classes = len(json.loads(paths.train_json.read_text())["categories"])
    table, notes = parity_frame(canonical_values(cfg, num_classes), effective)
    click.echo(table.to_markdown(index=False, disable_numparse=True))
    if notes:
        click.echo("\nDivergences (✗):")
        for note in notes:
            click.echo(f"- {note}")
    sys.exit(1 if failed or any(n.endswith("UNEXPLAINED") for n in notes) else 0)


def _each_installed(impl: str, interpreters: dict, ask) -> tuple[dict, list[str]]:
    """({name: ask(name, python)} for every installed implementation --impl names, [names that failed]);
    one failing (RuntimeError) leaves the others' answers, one not installed is skipped and said so."""
    from . import launch

    answers, failed = {}, []
    for name in _parse_impls(impl):
        python = launch.interpreter_for(name, interpreters)
        ok, info = launch.probe(name, python)
        if not ok:
            click.echo(f"{name}: skipped, not installed: {info}", err=True)
            continue
        try:
            answers[name] = ask(name, python)
        except RuntimeError as e:
            click.echo(f"{name}: failed: {e}", err=True)
            failed.append(name)
    return answers, failed


def _forward_parity(config_name: str, impl: str, data_root: str | None, interpreters: dict) -> None:
    import tempfile

    import torch

    from .data import resolve_data
    from .parity import FORWARD_RTOL, check_images, forward_for, forward_frame

    cfg = load_config(resolve_config_path(config_name))
    paths, _ = resolve_data(cfg.data, data_root)
    cfg = _with_shared_init(cfg, paths)
    images = check_images(cfg, paths.train_json, paths.train_images)
    with tempfile.TemporaryDirectory(prefix="mrcnn-bench-forward-") as tmp:
        torch.save(images, Path(tmp) / "images.pt")

        def forward(name, python):
            click.echo(f"{name}: forward on {tuple(images.shape)} ...", err=True)
            return forward_for(name, python, cfg, Path(tmp) / "images.pt", Path(tmp) / f"{name}.pt")

        outputs, failed = _each_installed(impl, interpreters, forward)
    if not outputs:
        raise BadInput("no implementation could run the forward check")
    table, problems = forward_frame(outputs)
    base = next(iter(outputs))
    click.echo(f"one batch of {images.shape[0]} images ({'x'.join(map(str, images.shape[-2:]))} padded) from the run's data order, "
               f"the shared initial weights, training mode: each implementation's FPN features and RPN head outputs, as "
               f"max |difference from {base}| / max |{base}| (tolerance {FORWARD_RTOL:g})\n")
    click.echo(table.to_markdown(index=False, disable_numparse=True))
    for p in problems:
        click.echo(f"- {p}")
    sys.exit(1 if problems or failed else 0)


def _trajectory_parity(run_dir: str, band: float | None) -> None:
    from .parity import POSITIVES_BAND, trajectory_frame
    from .report import load_runs

    records = load_runs([run_dir])
    if not records:
        raise BadInput(f"{run_dir}: no run.json under it (a folder made by mrcnn-bench run)")
    run_ids = sorted({r["run_id"] for r in records})
    if len(run_ids) > 1:
        raise BadInput(f"{run_dir}: holds runs {', '.join(run_ids)}; --run takes the folder of one run")
    band = band or POSITIVES_BAND
    table, problems = trajectory_frame(records, band)
    click.echo(f"run {run_ids[0]}: lr against the canonical schedule (relative tolerance 1e-6), global batch, "
               f"work per image over the timed window (positives within ±{100 * band:.0f}% of the median)\n")
    click.echo(table.to_markdown(index=False, disable_numparse=True))
    if problems:
        click.echo("\nDivergences:")
        for p in problems:
            click.echo(f"- {p}")
        sys.exit(1)
    click.echo("\nno divergence")


# ---------------------------------------------------------------------------------------- list
@main.command("list")
def list_impls():
    """The implementations this harness knows, and whether each is installed."""
    from mrcnn_bench.adapters import adapter_names

    from . import launch

    for name in adapter_names():
        python = launch.interpreter_for(name, {})
        ok, info = launch.probe(name, python)
        click.echo(f"{name:12s} {'installed' if ok else 'missing  '}  {info}  [{python}]")


if __name__ == "__main__":
    main()
