"""The ``mrcnn-bench`` command line.

Exit codes: 0 success; 1 a benchmark ran but an implementation failed (or a regression was found); 2 bad input
(config, data, arguments, an implementation not installed, a run id in use), nothing started; 128 + the
signal's
number when stopped by one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: the running implementation is recorded as
interrupted, finished ones are kept).
"""

from __future__ import annotations

import errno
import functools
import sys
from dataclasses import fields, replace
from pathlib import Path

import click

from .config.schema import ConfigError, load_config, parse_override, resolve_config_path
from .data.datasets import DataError
from .run import suite
from .run.suite import CANONICAL
from .tasks import tasks


class BadInput(click.ClickException):
    exit_code = 2


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _bad_input(fn):
    """Turn the harness's own input errors into exit code 2 with the message, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .records.results import ResultError
        from .run.launch import Interrupted, LaunchError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, ResultError, LaunchError, suite.RequestError) as e:
            raise BadInput(str(e)) from None
        except suite.RunFailed as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            where = f"{e.filename or 'a result file'}: {e.strerror}"
            if e.errno in _DISK_FULL:  # the machine's state, not the input: exit 1
                raise click.ClickException(
                    f"{where}; free space and re-run with the same --run-id to resume"
                ) from None
            if e.errno in _UNWRITABLE:  # an --out that cannot be written
                raise BadInput(where) from None
            raise
        except (
            KeyboardInterrupt
        ) as e:  # Ctrl-C or a stop signal: what it stopped, and the exit code 128 + its number
            stop = Interrupted.of(e)
            click.echo(stop.message, err=True)
            sys.exit(stop.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mrcnn-bench")
def main():
    """Train Mask R-CNN R-50-FPN in several implementations on identical hyperparameters and compare
    their training throughput."""
    from .run.launch import interrupt_on_stop_signals

    interrupt_on_stop_signals()  # SIGTERM and SIGHUP stop a command as Ctrl-C does


def _run_id_option(fn):
    def check(ctx, param, value):
        from .run.folder import check_run_id
        from .run.launch import LaunchError

        try:
            return check_run_id(value)
        except LaunchError as e:
            raise BadInput(str(e)) from None

    return click.option(
        "--run-id", default=None, callback=check, help="Folder name under --out [a new timestamped id]."
    )(fn)


# ---------------------------------------------------------------------------------------- data
@main.group()
def data():
    """Data sets."""


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--images", default=64, show_default=True, type=click.IntRange(min=1), help="Training images.")
@click.option(
    "--val-images", default=None, type=click.IntRange(min=1), help="Validation images [images/4, at least 4]."
)
@click.option(
    "--size", default=256, show_default=True, type=click.IntRange(min=32), help="Images' long side in pixels."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--categories",
    default=80,
    show_default=True,
    type=click.IntRange(1, 80),
    help="COCO's first N categories.",
)
@_bad_input
def data_synth(out, images, val_images, size, seed, categories):
    """Write a deterministic synthetic COCO-format data set (train2017 + val2017) shaped like COCO."""
    from .data.datasets import describe_splits, make_synthetic

    paths = make_synthetic(
        out, images=images, size=size, seed=seed, val_images=val_images, categories=categories
    )
    click.echo(describe_splits(paths))


# ----------------------------------------------------------------------------------------- run
def _run_options(fn):
    """The options `run` and `sweep` share."""
    for decorator in reversed(
        [
            click.option(
                "--impl",
                default="torchvision",
                show_default=True,
                help="Comma-separated implementations, or 'all' (those installed).",
            ),
            click.option(
                "--config",
                "config_name",
                default=None,
                help=f"A config file, or the name of one in configs/ [{CANONICAL} when CUDA is visible, else "
                "cpu_small].",
            ),
            click.option(
                "--ims-per-gpu",
                type=click.IntRange(min=1),
                default=None,
                help="Weak scaling: images per process; the global batch is this x processes and the "
                "learning rate "
                "scales with it [strong scaling: the config's global batch split over the processes].",
            ),
            click.option(
                "--device", type=click.Choice(["cpu", "cuda"]), default=None, help="[config benchmark.device]"
            ),
            click.option(
                "--data",
                "data_root",
                default=None,
                type=click.Path(),
                help="COCO root (annotations/, train2017/); default: synthetic.",
            ),
            click.option(
                "--out",
                "out_root",
                default="results/runs",
                show_default=True,
                type=click.Path(file_okay=False),
            ),
            _run_id_option,
            click.option(
                "--set",
                "overrides",
                multiple=True,
                metavar="KEY=VALUE",
                help="Override a config key, e.g. benchmark.iters=20.",
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=1),
                default=None,
                help="Threads per process [cores / processes].",
            ),
            click.option(
                "--timeout",
                type=float,
                default=None,
                help="Seconds per implementation [config benchmark.timeout_s].",
            ),
            click.option("--force", is_flag=True, help="Overwrite existing results of the same run id."),
            click.option(
                "--price-per-hour",
                type=float,
                default=None,
                metavar="USD",
                help="The machine's price: the report's cost per 1000 images [config "
                "benchmark.price_per_hour].",
            ),
            click.option(
                "--python",
                "pythons",
                multiple=True,
                metavar="IMPL=PATH",
                help="Interpreter for an implementation (its own venv).",
            ),
            click.option(
                "--settings",
                type=click.Choice(["shipped", "best", "both"]),
                help="Each as shipped, at its best (settings "
                "its users can turn on; `parity` lists them), or both in every round [config "
                "benchmark.settings].",
            ),
            click.option("--best", "settings", flag_value="best", help="= --settings best."),
            click.option(
                "--allow-divergent",
                "allow_divergent",
                multiple=True,
                metavar="KEY",
                help="Run an implementation that cannot express this canonical key's value anyway (recorded "
                "in "
                "run.json, ✗ in the report) [config benchmark.allow_divergent].",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


@main.command()
@_run_options
@click.option(
    "--gpus", type=click.IntRange(min=1), default=None, help="Processes per node [config benchmark.gpus]."
)
@click.option(
    "--launcher",
    type=click.Choice(["torchrun", "slurm"]),
    default="torchrun",
    show_default=True,
    help="slurm: each `srun` task is one process; rank, world size and master address come from SLURM.",
)
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default=None, help="Node 0's address (needed with --nnodes > 1).")
@click.option("--master-port", type=int, default=None)
@click.option(
    "--rdzv-timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds the nodes wait for each other at start.",
)
@click.option(
    "--container",
    default=None,
    metavar="IMAGE",
    help="External systems (mrcnn-bench list): run in this docker image and ingest its log.",
)
@click.option(
    "--task",
    type=click.Choice(list(tasks())),
    default=None,
    help="; ".join(t.help for t in tasks().values()) + " [config benchmark.task, train].",
)
@click.option(
    "--batch-sizes",
    default=None,
    metavar="1,2,4,8",
    help="--task infer: images per timed call, each size in turn [config benchmark.batch_sizes].",
)
@click.option(
    "--workers",
    default=None,
    metavar="0,1,2,4",
    help="--task data: the loader worker counts, each in turn (OUT/<run-id>/w<N>/<impl>/) [0 up to the "
    "threads "
    "per process].",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Rounds of all the implementations, interleaved (round k runs them in reverse order when k is "
    "even); "
    "round k writes OUT/<run-id>/r<k>/<impl>/. What `regress` needs to see run-to-run noise.",
)
@_bad_input
def run(task, **options):
    """Train each implementation and time iterations [warmup, end) (or, --task infer, time its inference
    per batch size; --task eval, train and score it on the val split); writes OUT/<run-id>/<impl>/run.json."""
    request = {f.name: options.pop(f.name) for f in fields(suite.RunRequest)}
    task = task or suite.task_of_command(click.get_current_context().info_name)
    done = suite.run_command(suite.RunRequest(**request), task=task, **options)  # the launch options
    if done is None:  # an external system: its config and commands written, or its log ingested
        return
    run_dir, records, opts, slurm = done
    if not opts.leader:
        click.echo(suite.follower_done(records, "task" if slurm else "node", run_dir))
        sys.exit(1 if any(r["status"] != "ok" for r in records) else 0)
    from .report.tables import render_markdown

    click.echo(f"\nresults: {run_dir}\n")
    click.echo(render_markdown(records, detail=False))
    sys.exit(0 if all(r["status"] == "ok" for r in records) else 1)


@main.command()
@_run_options
@click.option(
    "--gpus", "gpu_counts", required=True, help="Process counts of the series, e.g. 1,2,4,8 (one node)."
)
@_bad_input
def sweep(gpu_counts, **common):
    """Run the benchmark at each process count of --gpus (strong scaling, or weak with --ims-per-gpu)
    and print the scaling table; runs go to OUT/<run-id>-g<N>/."""
    from .records.results import new_run_id
    from .report.tables import render_markdown

    counts = suite.counts_of(gpu_counts, "--gpus", "process counts", "1,2,4,8", least=1)
    req = suite.RunRequest(**common)
    req = replace(req, config_name=suite.default_config(req.config_name))
    configs = {
        n: req.config(n) for n in counts
    }  # every point of the series is checked before the first one runs
    base_id = req.run_id or new_run_id()
    records = []
    for n, cfg in configs.items():
        click.echo(f"== sweep: {n} process(es)", err=True)
        records += suite.run_suite(
            cfg, req.impl, req.launch_options(n), f"{base_id}-g{n}", req.out_root, req.data_root
        )[1]
    click.echo(f"\nresults: {Path(req.out_root)}/{base_id}-g{{{','.join(map(str, counts))}}}\n")
    click.echo(render_markdown(records))
    sys.exit(0 if all(r["status"] == "ok" for r in records) else 1)


# -------------------------------------------------------------------------------------- report
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option(
    "--out", default=None, type=click.Path(dir_okay=False), help="Write to a file (atomically) too."
)
@click.option(
    "--plots", default=None, type=click.Path(file_okay=False), help="Write PNG plots to this folder."
)
@click.option(
    "--title", default=None, help="A Markdown heading (and a note of how the file was made) above the tables."
)
@click.option(
    "--into",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Also put the short table between the markers of this Markdown file: training runs (repeated runs, "
    "else the summary) between the 'report' markers, inference runs' latency table between the "
    "'inference' ones, accuracy runs' table between the 'accuracy' ones.",
)
@_bad_input
def report(paths, fmt, out, plots, title, into):
    """Tables from one or more run folders (results/runs/<id>, or any folder holding run.json files)."""
    click.echo(suite.report_command(paths, fmt, out, plots, title, into), nl=False)
    if plots:
        click.echo(f"plots: {plots}", err=True)


for _task in [
    t for t in tasks().values() if t.command
]:  # `mrcnn-bench trace` is `run --task trace`, its own help
    main.add_command(
        click.Command(
            _task.command,
            params=run.params,
            callback=run.callback,
            help=(
                f"{_task.help.split(': ', 1)[-1].capitalize()}: `run --task {_task.name}`, with run's "
                "options."
            ),
        )
    )


# ------------------------------------------------------------------------------------- regress
@main.command()
@click.option(
    "--baseline",
    default=None,
    type=click.Path(),
    help="A run folder, or a folder of rounds (`run --repeats`), to compare against.",
)
@click.option(
    "--candidate", default=None, type=click.Path(), help="The run folder (or folder of rounds) under test."
)
@click.option(
    "--threshold",
    default="5%",
    show_default=True,
    help="Slowdown tolerated before failing (e.g. 5% or 0.05).",
)
@click.option(
    "--confidence",
    default=0.95,
    show_default=True,
    type=click.FloatRange(0.5, 1, max_open=True),
    help="Level of the slowdown's interval; a regression's interval lies above 1.",
)
@click.option(
    "--relative-to",
    "relative_to",
    default=None,
    help="Gate each implementation's throughput over this peer's in the same round (cancels the machine's "
    "speed).",
)
@click.option(
    "--impl", "impls", default=None, help="Comma-separated implementations to gate [all ok in the baseline]."
)
@click.option(
    "--history",
    "history_dir",
    default=None,
    type=click.Path(),
    help="Instead: runs over commits in this folder; find the commit where throughput stepped.",
)
@click.option(
    "--plot", default=None, type=click.Path(dir_okay=False), help="With --history: write the plot (PNG) here."
)
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.option(
    "--allow-noisy", is_flag=True, help="Gate runs marked noisy (run.json's noisy) too, with a warning."
)
@click.option(
    "--comment",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write the verdict here as a PR comment (Markdown).",
)
@_bad_input
def regress(**options):
    """Exit 1 when the candidate is slower than the baseline beyond the threshold with the given
    confidence, or an implementation failed or is missing in it; exit 2 when the two cannot be
    compared. Rounds are runs: the interval includes run-to-run variance (docs/reliability.md, "The regression
    gate")."""
    text, warnings, code = suite.regress_command(suite.GateRequest(**options))
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if text:
        click.echo(text, nl=not options["history_dir"])
    sys.exit(code)


# ------------------------------------------------------------------------------------- publish
@main.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="site", show_default=True, type=click.Path(file_okay=False))
@_bad_input
def publish(results, out):
    """A static site of every run under RESULTS (an index, a page per scenario, the runs' files):
    OUT/index.html."""
    from .report.site import publish as build

    click.echo(build(results, out).text())


# -------------------------------------------------------------------------------------- parity
@main.command()
@click.option("--config", "config_name", default="mask_rcnn_R_50_FPN_noaug_1x", show_default=True)
@click.option("--impl", default="all", show_default=True)
@click.option("--data", "data_root", default=None, type=click.Path(), help="Data set (for the class count).")
@click.option("--python", "pythons", multiple=True, metavar="IMPL=PATH")
@click.option(
    "--run",
    "run_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Instead of the static table: check what the implementations of this run did (lr, batch, work).",
)
@click.option(
    "--band",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="With --run: tolerated distance of positives per image from the median [0.25].",
)
@click.option(
    "--check-forward",
    is_flag=True,
    help="Instead: one batch through each, its FPN features and RPN outputs compared.",
)
@click.option(
    "--check-step",
    is_flag=True,
    help="Instead: one training step of each on the same batch against the reference's.",
)
@click.option(
    "--keep", default=None, type=click.Path(file_okay=False), help="--check-step's batch and runs kept here."
)
@_bad_input
def parity(config_name, impl, data_root, pythons, run_dir, band, check_forward, check_step, keep):
    """The effective hyperparameters of every installed implementation, side by side; with --run, the
    trajectories
    of one run; with --check-forward, their outputs on one batch; with --check-step, one training step of each
    against the reference's: losses, gradients per module, optimizer groups, work (exit 1 on a divergence)."""
    from .run import checks

    text, ok = checks.parity_command(
        config_name, impl, data_root, pythons, run_dir, band, check_forward, check_step, keep
    )
    click.echo(text)
    sys.exit(0 if ok else 1)


# -------------------------------------------------------------------------------------- phases
@main.command()
@_run_options
@click.option(
    "--into",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="Also put the phases table between the `mrcnn-bench phases` markers of this Markdown file.",
)
@click.option(
    "--plots",
    default=None,
    type=click.Path(file_okay=False),
    help="Write the stacked-bar plot (phases.png) here.",
)
@_bad_input
def phases(into, plots, **common):
    """Where each implementation spends its training step, on one process: every phase timed inside its own
    training loop by one method (engine/phases.py), the window's mean ms per iteration, and the host-device
    waits of one step. A run of its own (benchmark.phases: the synchronizes change the throughput)."""
    from .run import suite

    run_dir, text, failed = suite.phases_command(suite.RunRequest(**common), into, plots)
    click.echo(f"\nresults: {run_dir}\n")
    click.echo(text or "_no phases measured_\n")
    for r in failed:
        click.echo(f"{r['impl']}: {r['status']}: {r['reason']}")
    if plots:
        click.echo(f"plots: {plots}", err=True)
    sys.exit(1 if failed else 0)


# -------------------------------------------------------------------------------------- ingest
@main.command()
@click.option(
    "--impl", "name", help="The external system whose log this is (mrcnn-bench list); not with mlperf."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["log", "mlperf"]),
    default="log",
    show_default=True,
    help="log: an external system's own training log; mlperf: MLPerf Training result logs of Mask R-CNN "
    "(':::MLLOG' lines), one system per submission_org and submission_platform.",
)
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--config", "config_name", default=CANONICAL, show_default=True, help="The canonical config it ran."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="As `run --set` (e.g. benchmark.gpus=8)."
)
@click.option(
    "--out", "out_root", default="results/runs", show_default=True, type=click.Path(file_okay=False)
)
@_run_id_option
@_bad_input
def ingest(name, fmt, logs, config_name, overrides, out_root, run_id):
    """Read an external system's own training log (the first LOG is rank 0's; more are checked against
    it) into OUT/<run-id>/<impl>/run.json: the same window and throughput definition as a measured run,
    marked measured_by: log. With --format mlperf, MLPerf result logs: a record per system, its time to
    train scored as MLPerf scores it, what differs from the config listed."""
    cfg = load_config(resolve_config_path(config_name), dict(parse_override(o) for o in overrides))
    click.echo(suite.ingest_logs(name, fmt, list(logs), cfg, out_root, run_id))


@main.command()
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cuda: NVML must answer (its absence is bad); the GPUs are read wherever NVML answers.",
)
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
def doctor(device, fmt):
    """The machine's state before a run (each finding ok, warning or bad, with why); every run.json keeps
    it."""
    from .machine.doctor import machine_state, render

    click.echo(render(machine_state(device), fmt))


@main.command("list")
def list_impls():
    """The implementations this harness knows, and whether each is installed."""
    for line in suite.implementations():
        click.echo(line)


if __name__ == "__main__":
    main()
