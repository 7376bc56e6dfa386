"""The ``mrcnn-bench`` command line.

Exit codes: 0 success; 1 a benchmark ran but an implementation failed (or a regression was found);
2 bad input (config, data, arguments, an implementation that is not installed, a run id in use),
nothing started; 128 + the signal's number when stopped by one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP:
the running implementation is recorded as interrupted, finished ones are kept).
"""
from __future__ import annotations

import errno
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


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _bad_input(fn):
    """Turn the harness's own input errors into exit code 2 with the message, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .launch import Interrupted, LaunchError
        from .results import ResultError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, ResultError, LaunchError) as e:
            raise BadInput(str(e)) from None
        except OSError as e:
            where = f"{e.filename or 'a result file'}: {e.strerror}"
            if e.errno in _DISK_FULL:  # the machine's state, not the input: exit 1
                raise click.ClickException(f"{where}; free space and re-run with the same --run-id to resume") from None
            if e.errno in _UNWRITABLE:  # an --out that cannot be written
                raise BadInput(where) from None
            raise
        except KeyboardInterrupt as e:
            stop = Interrupted.of(e)
            click.echo(f"interrupted {stop.how}", err=True)
            sys.exit(stop.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mrcnn-bench")
def main():
    """Train Mask R-CNN R-50-FPN in several implementations on identical hyperparameters and compare
    their training throughput."""
    from .launch import interrupt_on_stop_signals

    interrupt_on_stop_signals()  # SIGTERM and SIGHUP stop a command as Ctrl-C does


def _run_id_option(fn):
    def check(ctx, param, value):
        from .launch import LaunchError
        from .run_folder import check_run_id

        try:
            return check_run_id(value)
        except LaunchError as e:
            raise BadInput(str(e)) from None

    return click.option("--run-id", default=None, callback=check, help="Folder name under --out [a new timestamped id].")(fn)


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
    named = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [i for i in named if i not in known]
    if unknown:
        raise BadInput(f"--impl: unknown implementation(s) {', '.join(unknown)}; known: {', '.join(known)}, or 'all'")
    impls = list(dict.fromkeys(named))
    if len(impls) < len(named):
        twice = sorted({i for i in named if named.count(i) > 1})
        click.echo(f"--impl: {', '.join(twice)} named more than once; each runs once", err=True)
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
        _run_id_option,
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. benchmark.iters=20."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per process [cores / processes]."),
        click.option("--timeout", type=float, default=None, help="Seconds per implementation [config benchmark.timeout_s]."),
        click.option("--force", is_flag=True, help="Overwrite existing results of the same run id."),
        click.option("--python", "pythons", multiple=True, metavar="IMPL=PATH", help="Interpreter for an implementation (its own venv)."),
        click.option("--allow-divergent", "allow_divergent", multiple=True, metavar="KEY",
                     help="Run an implementation that cannot express this canonical key's value anyway (recorded in "
                          "run.json, ✗ in the report) [config benchmark.allow_divergent]."),
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
@click.option("--container", default=None, metavar="IMAGE",
              help="External systems (mrcnn-bench list): run in this docker image and ingest its log.")
@click.option("--task", type=click.Choice(["train", "infer", "eval"]), default=None,
              help="train: throughput over the window; infer: latency per batch size of each framework's eval path; "
                   "eval: train, then bbox and segm AP on the val split [config benchmark.task, train].")
@click.option("--batch-sizes", default=None, metavar="1,2,4,8",
              help="--task infer: images per timed call, each size in turn [config benchmark.batch_sizes].")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rounds of all the implementations, interleaved (round k runs them in reverse order when k is even); "
                   "round k writes OUT/<run-id>/r<k>/<impl>/. What `regress` needs to see run-to-run noise.")
@_bad_input
def run(impl, config_name, ims_per_gpu, device, data_root, out_root, run_id, overrides, threads, timeout, force, pythons, allow_divergent,
        gpus, launcher, nnodes, node_rank, master_addr, master_port, rdzv_timeout, container, task, batch_sizes, repeats):
    """Train each implementation and time iterations [warmup, end) (or, --task infer, time its inference
    per batch size; --task eval, train and score it on the val split); writes OUT/<run-id>/<impl>/run.json."""
    from mrcnn_bench.external import system_names

    from . import launch

    overrides = list(overrides) + _task_overrides(task, batch_sizes)

    if impl in system_names():
        cfg = _allowing(_scaled_config(_default_config(config_name), _values(overrides, device, timeout), gpus, ims_per_gpu),
                        allow_divergent)
        _run_external(impl, cfg, out_root, run_id, data_root, container)
        return
    if container:
        raise BadInput(f"--container goes with an external system ({', '.join(system_names())}), not --impl {impl}")

    slurm = None
    if launcher == "slurm":
        slurm = launch.slurm_task(master_port=master_port)
        gpus, nnodes, node_rank = slurm.local_world, slurm.nnodes, slurm.rank // slurm.local_world
    elif nnodes > 1 and not master_addr:
        raise BadInput(f"--nnodes {nnodes}: --master-addr is required (node 0's address, the same on every node)")
    if node_rank >= nnodes:
        raise BadInput(f"--node-rank {node_rank} is out of range for --nnodes {nnodes} (0 to {nnodes - 1})")
    cfg = _allowing(_scaled_config(_default_config(config_name), _values(overrides, device, timeout),
                                   gpus * nnodes if gpus is not None else None, ims_per_gpu), allow_divergent)
    nproc = cfg.benchmark.gpus // nnodes
    if nproc * nnodes != cfg.benchmark.gpus:
        raise BadInput(f"benchmark.gpus={cfg.benchmark.gpus} is not divisible by --nnodes {nnodes}")
    opts = launch.LaunchOptions(
        nproc_per_node=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port,
        threads_per_rank=threads, timeout_s=timeout, force=force, interpreters=_interpreters(pythons),
        rdzv_timeout_s=rdzv_timeout, slurm=slurm,
    )
    if repeats > 1:
        if nnodes > 1 or slurm:
            raise BadInput("--repeats runs on one node; repeat a multi-node run by launching it again")
        run_dir, records = _run_rounds(cfg, impl, opts, run_id, out_root, data_root, repeats)
    else:
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
def sweep(impl, config_name, ims_per_gpu, device, data_root, out_root, run_id, overrides, threads, timeout, force, pythons, allow_divergent,
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
    configs = {n: _allowing(_scaled_config(config_name, values, n, ims_per_gpu), allow_divergent) for n in counts}
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


def _task_overrides(task: str | None, batch_sizes: str | None) -> list[str]:
    """--task and --batch-sizes as config overrides (benchmark.task, benchmark.batch_sizes)."""
    out = [f"benchmark.task={task}"] if task else []
    if batch_sizes is not None:
        try:
            sizes = [int(part) for part in batch_sizes.split(",") if part.strip()]
        except ValueError:
            raise BadInput(f"--batch-sizes {batch_sizes!r}: expected positive integers such as 1,2,4,8") from None
        if not sizes or min(sizes) < 1:
            raise BadInput(f"--batch-sizes {batch_sizes!r}: expected one or more positive integers such as 1,2,4,8")
        out.append(f"benchmark.batch_sizes=[{','.join(map(str, sizes))}]")
    return out


def _check_task(cfg, summary: dict) -> None:
    """What --task infer and eval need: one process, and (infer) a val split with a batch's images."""
    bench = cfg.benchmark
    if bench.task == "train":
        return
    if bench.gpus != 1:
        raise BadInput(f"--task {bench.task} runs on one process (benchmark.gpus={bench.gpus}): use --gpus 1")
    val = summary.get("val")
    if not val or not val.get("images"):
        raise BadInput(f"--task {bench.task}: the data set has no val split with images ({cfg.data.val_split})")
    if bench.task == "infer" and max(bench.batch_sizes) > val["images"]:
        raise BadInput(f"--batch-sizes {','.join(map(str, bench.batch_sizes))}: batch size {max(bench.batch_sizes)} is larger "
                       f"than the val split ({val['images']} images, data.val_split {cfg.data.val_split})")


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


def _run_rounds(cfg, impl_text: str, opts, run_id, out_root, data_root, repeats: int):
    """``repeats`` rounds of the implementations, the order reversed every other round (ABBA: a drift of
    the machine's speed over the rounds falls on every implementation alike); rounds already finished
    under the run id are kept."""
    from .launch import LaunchError
    from .results import new_run_id

    from .run_folder import RunLock

    run_id = run_id or new_run_id()
    records = []
    with RunLock(Path(out_root) / run_id, opts.part):
        for k in range(1, repeats + 1):
            click.echo(f"== round {k}/{repeats}", err=True)
            try:
                records += _run_suite(cfg, impl_text, opts, f"{run_id}/r{k}", out_root, data_root, reverse=k % 2 == 0)[1]
            except LaunchError as e:
                if "finished results exist" not in str(e):
                    raise
                from .frames import load_runs

                click.echo(f"round {k}: finished earlier, kept (--force re-runs it)", err=True)
                records += load_runs([Path(out_root) / run_id / f"r{k}"])
    return Path(out_root) / run_id, records


def _run_suite(cfg, impl_text: str, opts, run_id, out_root, data_root, reverse: bool = False):
    """Probe, resume, data, shared weights, then every implementation in turn: (run folder, records)."""
    from . import launch
    from .data import resolve_data
    from .results import new_run_id
    from .run_folder import RunLock

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
    from .parity import check_divergences

    for name, divergences in check_divergences(cfg, runnable).items():
        for key, why in divergences.items():
            click.echo(f"{name}: runs {key} otherwise (allowed): {why}", err=True)
    paths, summary = resolve_data(cfg.data, data_root)  # bad data: exit 2 before anything is written
    dropped = summary["train"].get("dropped")
    click.echo(f"data: {summary['kind']} at {paths.root} ({summary['train']['images']} training images"
               + (f"; {dropped['annotations']} unusable annotation(s) and {dropped['short_polygons']} polygon(s) of "
                  f"fewer than 3 points dropped for every implementation" if dropped else "") + ")", err=True)
    _check_task(cfg, summary)
    run_id = run_id or new_run_id()
    with RunLock(Path(out_root) / run_id.split("/")[0], opts.part):  # the run id's folder, whatever round this is
        return _run_locked(cfg, runnable, opts, Path(out_root), run_id, paths, summary, reverse)


def _run_locked(cfg, runnable: list[str], opts, out_root: Path, run_id: str, paths, summary: dict, reverse: bool):
    """_run_suite's part under the run folder's lock: resume, shared weights, the implementations."""
    from . import launch
    from .results import load_run

    run_dir = out_root / run_id
    cfg = _with_shared_training(_with_shared_init(cfg, paths), paths)
    kept = [] if opts.force else [i for i in runnable if launch.finished(run_dir, i)]
    kept_records = [load_run(run_dir / i) for i in kept]
    if kept:  # checked before anything else: a round of --repeats finished earlier is a resumed run too
        from .run_folder import resume_mismatches

        differ = resume_mismatches(kept_records, cfg.to_dict(), summary, _machine(cfg, opts))
        if differ:
            raise BadInput(f"{run_dir}: resuming with other settings than the finished results of {', '.join(kept)} "
                           f"({'; '.join(differ)}); pass --force to start the run afresh, or choose another --run-id")
    todo = launch.plan_resume(run_dir, runnable[::-1] if reverse else runnable, opts.force)
    if kept:
        click.echo(f"resuming run {run_id}: keeping the finished results of {', '.join(kept)} (--force re-runs them)", err=True)
    try:
        records = launch.run_suite(cfg, todo, paths, summary, out_root, run_id, opts)
    except launch.KeyboardInterruptWithRecord as e:
        click.echo(f"interrupted {e.how}: {e.record['impl']} marked interrupted; finished results are intact; "
                   f"re-run with --run-id {run_id.split('/')[0]} to resume", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        stop = launch.Interrupted.of(e)
        click.echo(f"interrupted {stop.how} between implementations; finished results are intact; "
                   f"re-run with --run-id {run_id.split('/')[0]} to resume", err=True)
        sys.exit(stop.exit_code)
    return run_dir, kept_records + records


def _machine(cfg, opts) -> dict:
    """What a resumed run's finished part must have run on: the CPU, the GPUs, the threads per process."""
    from . import launch
    from .results import cpu_model

    gpus = []
    if cfg.benchmark.device == "cuda":
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    local = opts.slurm.local_world if opts.slurm else opts.nproc_per_node
    return {"cpu": cpu_model(), "gpus": gpus,
            "torch_threads": opts.threads_per_rank or cfg.benchmark.threads_per_rank or launch.default_threads(local)}


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


def _allowing(cfg, keys):
    """The config with --allow-divergent's keys added to benchmark.allow_divergent."""
    if not keys:
        return cfg
    merged = list(dict.fromkeys([*cfg.benchmark.allow_divergent, *keys]))
    return cfg.with_overrides({"benchmark.allow_divergent": merged}, source="--allow-divergent")


def _with_shared_init(cfg, paths):
    from .init_weights import WeightsError, with_shared_init

    try:
        cfg, message = with_shared_init(cfg, paths)
    except WeightsError as e:
        raise BadInput(str(e)) from None
    if message:
        click.echo(message, err=True)
    return cfg


def _with_shared_training(cfg, paths):
    from .shared_training import with_shared_training

    cfg, message = with_shared_training(cfg, paths)
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
              help="Also put the short table between the markers of this Markdown file: training runs (repeated runs, "
                   "else the summary) between the 'report' markers, inference runs' latency table between the "
                   "'inference' ones, accuracy runs' table between the 'accuracy' ones.")
@_bad_input
def report(paths, fmt, out, plots, title, into):
    """Tables from one or more run folders (results/runs/<id>, or any folder holding run.json files)."""
    from .report import compact_markdown, load_runs, readme_section, scenario_section, write_into, write_report

    records = load_runs(paths)
    if not records:
        raise BadInput(f"{', '.join(paths)}: no run.json below; nothing to report")
    if into:
        try:
            names = {(r.get("config") or {}).get("name") for r in records}
            write_into(Path(into), compact_markdown(records), f"mrcnn-bench report {' '.join(paths)} --into {into}",
                       section=scenario_section(Path(into), readme_section(records), names.pop() if len(names) == 1 else None))
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
@click.option("--baseline", default=None, type=click.Path(),
              help="A run folder, or a folder of rounds (`run --repeats`), to compare against.")
@click.option("--candidate", default=None, type=click.Path(), help="The run folder (or folder of rounds) under test.")
@click.option("--threshold", default="5%", show_default=True, help="Slowdown tolerated before failing (e.g. 5% or 0.05).")
@click.option("--confidence", default=0.95, show_default=True, type=click.FloatRange(0.5, 1, max_open=True),
              help="Level of the slowdown's interval; a regression's interval lies above 1.")
@click.option("--relative-to", "relative_to", default=None,
              help="Gate each implementation's throughput over this peer's in the same round (cancels the machine's speed).")
@click.option("--impl", "impls", default=None, help="Comma-separated implementations to gate [all ok in the baseline].")
@click.option("--history", "history_dir", default=None, type=click.Path(),
              help="Instead: runs over commits in this folder; find the commit where throughput stepped.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="With --history: write the plot (PNG) here.")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@_bad_input
def regress(baseline, candidate, threshold, confidence, relative_to, impls, history_dir, plot, fmt):
    """Exit 1 when the candidate is slower than the baseline beyond the threshold with the given
    confidence, or an implementation failed or is missing in it; exit 2 when the two cannot be
    compared. Rounds are runs: the interval includes run-to-run variance (README, "The regression gate")."""
    from .regress import NotComparable, parse_threshold

    try:
        thr = parse_threshold(threshold)
    except ValueError as e:
        raise BadInput(f"--threshold: {e}") from None
    impl_list = [i.strip() for i in impls.split(",") if i.strip()] if impls else None
    if history_dir:
        if baseline or candidate:
            raise BadInput("--history goes without --baseline/--candidate")
        _history(history_dir, relative_to, impl_list, thr, plot, fmt)
        return
    if not (baseline and candidate):
        raise BadInput("--baseline and --candidate are required (or --history DIR)")
    from .regress import regress as gate

    if Path(baseline).resolve() == Path(candidate).resolve():
        click.echo(f"warning: --baseline and --candidate are the same folder ({baseline}): the runs are compared "
                   "with themselves, which says nothing about a change", err=True)
    try:
        results, failures, warnings = gate(baseline, candidate, thr, confidence, relative_to, impl_list)
    except NotComparable as e:
        raise BadInput(str(e)) from None
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if fmt == "json":
        click.echo(json.dumps({"comparisons": [r.to_dict() for r in results], "failures": [f.to_dict() for f in failures]},
                              indent=2))
    else:
        import pandas as pd

        value = f"img/s ÷ {relative_to}'s" if relative_to else "img/s"
        if results:
            click.echo(pd.DataFrame({
                "Implementation": [r.label for r in results],
                "Runs (base/cand)": [f"{r.baseline_runs}/{r.candidate_runs}" for r in results],
                f"baseline {value}": [f"{r.baseline_value:.4g}" for r in results],
                f"candidate {value}": [f"{r.candidate_value:.4g}" for r in results],
                f"slowdown [{100 * confidence:.0f}% CI]": [f"{r.slowdown:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in results],
                "verdict": [r.verdict for r in results],
            }).to_markdown(index=False, disable_numparse=True))
        for f in failures:
            click.echo(f"FAILED: {f.impl}: {f.reason}")
    sys.exit(1 if failures or any(r.regression for r in results) else 0)


def _history(history_dir, relative_to, impls, threshold, plot, fmt):
    from .regress import history

    steps = history(history_dir, relative_to, impls, threshold)
    if plot:
        from .plots import history_plot

        history_plot(steps, Path(plot), relative_to)
        click.echo(f"plot: {plot}", err=True)
    if fmt == "json":
        click.echo(json.dumps([{"impl": s.impl, "commits": s.commits, "values": s.values, "step_commit": s.commit,
                                "change": s.change, "p_value": s.p_value} for s in steps], indent=2))
        return
    for s in steps:
        where = (f"stepped at {s.commits[s.index]}: x{s.change:.3f} (p={s.p_value:.2g})" if s.significant
                 else f"no step (best split x{s.change:.3f}, p={s.p_value:.2g})")
        click.echo(f"{s.impl}: {len(s.commits)} commits; {where}")


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
    if "reference" in effective:  # its levers: the same model and work, so settings rather than divergences
        click.echo("\nThe reference's speed settings (the same arithmetic and work; README, \"Levers\"): "
                   + ", ".join(f"reference.{k}={v}" for k, v in cfg.reference.model_dump().items()))
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
    from .parity import PIXELS_RTOL, POSITIVES_BAND, trajectory_frame
    from .report import load_runs

    records = load_runs([run_dir])
    if not records:
        raise BadInput(f"{run_dir}: no run.json under it (a folder made by mrcnn-bench run)")
    run_ids = sorted({r["run_id"] for r in records})
    if len(run_ids) > 1:
        raise BadInput(f"{run_dir}: holds runs {', '.join(run_ids)}; --run takes the folder of one run")
    if all((r.get("summary") or {}).get("task") == "infer" for r in records):
        raise BadInput(f"{run_dir}: an inference run (--task infer); --run checks what training runs did "
                       "(the inference runs' own check is the detections per image beside their latency)")
    band = band or POSITIVES_BAND
    table, problems = trajectory_frame(records, band)
    click.echo(f"run {run_ids[0]}: lr against the canonical schedule (relative tolerance 1e-6), global batch, "
               f"work per image over the timed window (positives within ±{100 * band:.0f}% of the median, padded pixels "
               f"within ±{100 * PIXELS_RTOL:.1f}% of the lower median)\n")
    click.echo(table.to_markdown(index=False, disable_numparse=True))
    if problems:
        click.echo("\nDivergences:")
        for p in problems:
            click.echo(f"- {p}")
        sys.exit(1)
    click.echo("\nno divergence")


# ---------------------------------------------------------------------------------------- list
# -------------------------------------------------------------------------------------- phases
@main.command()
@_run_options
@click.option("--into", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Also put the phases table between the `mrcnn-bench phases` markers of this Markdown file.")
@click.option("--plots", default=None, type=click.Path(file_okay=False), help="Write the stacked-bar plot (phases.png) here.")
@_bad_input
def phases(impl, config_name, ims_per_gpu, device, data_root, out_root, run_id, overrides, threads, timeout, force, pythons, allow_divergent,
           into, plots):
    """Where each implementation spends its training step, on one process: every phase timed inside its own
    training loop by one method (harness/phases.py), the window's mean ms per iteration, and the host-device
    waits of one step. A run of its own (benchmark.phases: the synchronizes change the throughput)."""
    from . import launch
    from .report import phases_markdown, write_into

    values = {**_values(overrides, device, timeout), "benchmark.phases": True}
    cfg = _allowing(_scaled_config(_default_config(config_name), values, 1, ims_per_gpu), allow_divergent)  # one process
    opts = launch.LaunchOptions(nproc_per_node=cfg.benchmark.gpus, threads_per_rank=threads, timeout_s=timeout, force=force,
                                interpreters=_interpreters(pythons))
    run_dir, records = _run_suite(cfg, impl, opts, run_id, out_root, data_root)
    text = phases_markdown(records)
    failed = [r for r in records if r["status"] != "ok"]
    click.echo(f"\nresults: {run_dir}\n")
    click.echo(text or "_no phases measured_\n")
    for r in failed:
        click.echo(f"{r['impl']}: {r['status']}: {r['reason']}")
    if plots:
        from .plots import phases_plot

        phases_plot(records, Path(plots) / "phases.png")
        click.echo(f"plots: {plots}", err=True)
    if into and text:
        try:
            sets = "".join(f" --set {o}" for o in overrides)
            from .report import scenario_section

            write_into(Path(into), text, f"mrcnn-bench phases --impl {impl} --config {cfg.name}{sets} --into {into}",
                       section=scenario_section(Path(into), "phases", cfg.name))
        except ValueError as e:
            raise BadInput(f"--into: {e}") from e
    sys.exit(1 if failed else 0)


# -------------------------------------------------------------------------------------- ingest
@main.command()
@click.option("--impl", "name", required=True, help="The external system whose log this is (mrcnn-bench list).")
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@click.option("--config", "config_name", default=CANONICAL, show_default=True, help="The canonical config it ran.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="As `run --set` (e.g. benchmark.gpus=8).")
@click.option("--out", "out_root", default="results/runs", show_default=True, type=click.Path(file_okay=False))
@_run_id_option
@_bad_input
def ingest(name, logs, config_name, overrides, out_root, run_id):
    """Read an external system's own training log (the first LOG is rank 0's; more are checked against
    it) into OUT/<run-id>/<impl>/run.json: the same window and throughput definition as a measured run,
    marked measured_by: log."""
    from mrcnn_bench.external import get_system

    from .ingest import ingest as read_log
    from .logs import LogError
    from .results import new_run_id

    try:
        system = get_system(name)
    except KeyError as e:
        raise BadInput(f"--impl: {e.args[0]}") from None
    cfg = load_config(resolve_config_path(config_name), dict(parse_override(o) for o in overrides))
    run_id = run_id or new_run_id()
    try:
        record = read_log(system, list(logs), cfg, Path(out_root) / run_id / name, run_id)
    except LogError as e:
        raise BadInput(str(e)) from None
    s = record["summary"]
    click.echo(f"{name}: {s['images_per_s']:.3f} img/s over iterations [{s['warmup']}, {s['end']}) "
               f"from {record['environment']['log_format']} log(s); measured_by: log")
    for note in record["from_log"]["notes"]:
        click.echo(f"  note: {note}")
    click.echo(f"results: {Path(out_root) / run_id / name}")


def _run_external(name, cfg, out_root, run_id, data_root, container):
    """An external system: write its native config and the commands; with --container, docker and the
    image present, run it and ingest its log."""
    import shutil
    import subprocess

    from mrcnn_bench.external import get_system

    from .ingest import ingest as read_log
    from .results import atomic_write_text, new_run_id

    system = get_system(name)
    run_id = run_id or new_run_id()
    run_dir = (Path(out_root) / run_id / name).resolve()
    translation = system.translate(cfg)
    for filename, text in translation.files.items():
        atomic_write_text(run_dir / filename, text)
    image = container or system.image
    docker = system.docker_command(image or "<IMAGE>", str(run_dir), str(Path(data_root).resolve()) if data_root else None,
                                   translation)
    import shlex

    ingest_cmd = shlex.join(["mrcnn-bench", "ingest", "--impl", name, str(run_dir / "train.log"), "--config", cfg.name,
                             "--set", f"benchmark.gpus={cfg.benchmark.gpus}", "--out", str(out_root), "--run-id", run_id])
    click.echo(f"{system.title} ({system.home}): native config written to {run_dir}")
    for note in translation.mismatches:
        click.echo(f"  cannot match: {note}")
    ready = container and shutil.which("docker") and subprocess.run(
        ["docker", "image", "inspect", container], capture_output=True).returncode == 0
    if not ready:
        why = ("no --container given" if not container else "docker is not on PATH" if not shutil.which("docker")
               else f"image {container} is not present (docker pull/build it)")
        click.echo(f"\nnot run here ({why}). In the system's own container"
                   + (f" (docker/external/{name}.Dockerfile builds {system.image})" if system.image else "") + ":\n\n"
                   f"  {shlex.join(docker)}\n\nthen read its log into the results:\n\n  {ingest_cmd}")
        return
    click.echo(f"running: {shlex.join(docker)}", err=True)
    status = subprocess.run(docker).returncode
    if status != 0:
        raise click.ClickException(f"{name}: the container exited {status}; its log: {run_dir / 'train.log'}")
    record = read_log(system, [run_dir / "train.log"], cfg, run_dir, run_id)
    click.echo(f"{name}: {record['summary']['images_per_s']:.3f} img/s (measured_by: log)")


@main.command("list")
def list_impls():
    """The implementations this harness knows, and whether each is installed."""
    from mrcnn_bench.adapters import adapter_names

    from . import launch

    for name in adapter_names():
        python = launch.interpreter_for(name, {})
        ok, info = launch.probe(name, python)
        click.echo(f"{name:12s} {'installed' if ok else 'missing  '}  {info}  [{python}]")
    from mrcnn_bench.external import get_system, system_names

    for name in system_names():
        system = get_system(name)
        click.echo(f"{name:12s} external   {system.title}: its own container, measured from its log "
                   f"(`run --impl {name}` prints the commands)")


if __name__ == "__main__":
    main()
