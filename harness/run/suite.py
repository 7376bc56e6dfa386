"""A benchmark run from a request to its records: the config, the implementations that can run, the
data, the shared weights, the rounds, then ``launch.run_suite`` for each implementation in turn.

The command line (cli.py) parses into a ``RunRequest`` and prints what comes back; this module raises
``RequestError`` for input that cannot run (the command exits 2) and ``launch.Interrupted`` when a
signal stops the run (128 + its number), and says its progress on stderr.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..config.schema import load_config, parse_override, resolve_config_path
from .launch import AlreadyFinished, Interrupted, KeyboardInterruptWithRecord, LaunchOptions

CANONICAL = "mask_rcnn_R_50_FPN_noaug_1x"  # the default config where CUDA is visible


class RequestError(Exception):
    """Input that cannot run (an option, a config, the data, an implementation not installed); nothing
    started."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunRequest:
    """What `run`, `sweep` and `phases` share: the implementations, the config and how to change it,
    where the data and the results are."""

    impl: str = "torchvision"
    config_name: str | None = None
    ims_per_gpu: int | None = None
    device: str | None = None
    data_root: str | None = None
    out_root: str = "results/runs"
    run_id: str | None = None
    overrides: tuple[str, ...] = ()
    threads: int | None = None
    timeout: float | None = None
    force: bool = False
    pythons: tuple[str, ...] = ()
    allow_divergent: tuple[str, ...] = ()
    price_per_hour: float | None = None
    settings: str | None = None  # shipped, best, or both (each round runs both modes): benchmark.settings

    @property
    def modes(self) -> tuple[str, ...]:
        """The settings modes each round runs: both with --settings both, else the config's one."""
        return ("shipped", "best") if self.settings == "both" else ()

    def config(self, world: int | None = None, extra: dict | None = None, rounds: bool = False):
        """The config named (or the default one), with --set, --device, --timeout, --settings and ``extra``,
        its batch spread over ``world`` processes, and --allow-divergent's keys allowed. ``rounds``: the
        command runs rounds (`run`), where --settings both can go."""
        if self.settings == "both" and not rounds:
            raise RequestError(
                "--settings both goes with `run` (every round runs each mode); here choose shipped or best"
            )
        values = dict(parse_override(o) for o in self.overrides)
        if self.device is not None:
            values["benchmark.device"] = self.device
        if self.timeout is not None:
            values["benchmark.timeout_s"] = self.timeout
        if self.price_per_hour is not None:
            values["benchmark.price_per_hour"] = self.price_per_hour
        if self.settings in ("shipped", "best"):
            values["benchmark.settings"] = self.settings
        from ..tasks import TaskError, task_of

        cfg = scaled_config(
            default_config(self.config_name), {**values, **(extra or {})}, world, self.ims_per_gpu
        )
        try:
            task = task_of(cfg.benchmark.task)
        except TaskError as e:
            raise RequestError(f"{self.config_name}: benchmark.task: {e}") from None
        cfg = task.configure(cfg)
        if not self.allow_divergent:
            return cfg
        merged = list(dict.fromkeys([*cfg.benchmark.allow_divergent, *self.allow_divergent]))
        return cfg.with_overrides({"benchmark.allow_divergent": merged}, source="--allow-divergent")

    def launch_options(self, nproc_per_node: int, **more) -> LaunchOptions:
        return LaunchOptions(
            nproc_per_node=nproc_per_node,
            threads_per_rank=self.threads,
            timeout_s=self.timeout,
            force=self.force,
            interpreters=interpreters(self.pythons),
            **more,
        )


def parse_impls(text: str) -> list[str]:
    """--impl: 'all' or names of known implementations, each once."""
    from mrcnn_bench.adapters import adapter_names

    known = adapter_names()
    if text == "all":
        return known
    named = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [i for i in named if i not in known]
    if unknown:
        raise RequestError(
            f"--impl: unknown implementation(s) {', '.join(unknown)}; known: {', '.join(known)}, or 'all'"
        )
    impls = list(dict.fromkeys(named))
    if len(impls) < len(named):
        twice = sorted({i for i in named if named.count(i) > 1})
        say(f"--impl: {', '.join(twice)} named more than once; each runs once")
    return impls


def interpreters(pythons) -> dict[str, str]:
    """--python IMPL=PATH, as {impl: path}."""
    found = {}
    for p in pythons:
        name, sep, path = p.partition("=")
        if not sep:
            raise RequestError(f"--python {p!r}: expected IMPL=PATH")
        found[name] = path
    return found


def task_of_command(command: str | None) -> str | None:
    """The task whose own command (``Task.command``) was run, if any."""
    from ..tasks import tasks

    return next((t.name for t in tasks().values() if t.command and t.command == command), None)


def task_overrides(task: str | None, batch_sizes: str | None) -> list[str]:
    """--task and --batch-sizes as config overrides (benchmark.task, benchmark.batch_sizes)."""
    out = [f"benchmark.task={task}"] if task else []
    if batch_sizes is not None:
        try:
            sizes = [int(part) for part in batch_sizes.split(",") if part.strip()]
        except ValueError:
            raise RequestError(
                f"--batch-sizes {batch_sizes!r}: expected positive integers such as 1,2,4,8"
            ) from None
        if not sizes or min(sizes) < 1:
            raise RequestError(
                f"--batch-sizes {batch_sizes!r}: expected one or more positive integers such as 1,2,4,8"
            )
        out.append(f"benchmark.batch_sizes=[{','.join(map(str, sizes))}]")
    return out


def default_config(name: str | None) -> str:
    """--config as given; else the canonical config where CUDA is visible and cpu_small elsewhere, said."""
    if name is not None:
        return name
    import torch

    if torch.cuda.is_available():
        name, why = CANONICAL, f"{torch.cuda.device_count()} CUDA device(s) visible"
    else:
        name, why = "cpu_small", f"no CUDA device visible; --config {CANONICAL} is the canonical benchmark"
    say(f"config: {name} ({why})")
    return name


def scaled_config(config_name: str, values: dict, world: int | None, ims_per_gpu: int | None):
    """The config with its batch spread over ``world`` processes (harness/run/scaling.py): strong scaling,
    or weak with --ims-per-gpu. A batch that cannot be spread is a RequestError naming the command that
    can."""
    from .scaling import ScalingError, plan

    path = resolve_config_path(config_name)
    if world is None and ims_per_gpu is None:
        return load_config(path, values)
    base = load_config(path, {k: v for k, v in values.items() if k != "benchmark.gpus"})
    # an accumulation the config or --set asks for is kept; otherwise benchmark.max_ims_per_step decides
    accum = (
        base.benchmark.grad_accum
        if "benchmark.grad_accum" in values or base.benchmark.grad_accum != 1
        else None
    )
    try:
        p = plan(base, world or base.benchmark.gpus, ims_per_gpu, accum)
    except ScalingError as e:
        raise RequestError(str(e)) from None
    say(p.describe())
    return base.with_overrides(p.overrides(), source=f"{path} (with overrides)")


def run_rounds(
    cfg, impl_text: str, opts, run_id, out_root, data_root, repeats: int, modes: tuple[str, ...] = ()
):
    """``repeats`` rounds of the implementations, the order reversed every other round (ABBA: a drift of
    the machine's speed over the rounds falls on every implementation alike); rounds already finished
    under the run id are kept. With ``modes`` (shipped, best) each round runs every implementation in
    each mode, under r<k>-<mode>/, the modes' order reversed every other round too. (run folder, records)"""
    from ..config.settings import MODE_TITLES

    if not modes:
        return _run_parts(
            impl_text,
            opts,
            run_id,
            out_root,
            data_root,
            [(f"round {k}/{repeats}", f"round {k}", f"r{k}", cfg, k % 2 == 0) for k in range(1, repeats + 1)],
        )
    parts = []
    for k in range(1, repeats + 1):
        for mode in modes if k % 2 else modes[::-1]:
            parts.append(
                (
                    f"round {k}/{repeats}, {MODE_TITLES[mode]}",
                    f"round {k} ({mode})",
                    f"r{k}-{mode}",
                    cfg.with_overrides({"benchmark.settings": mode}, source="--settings both"),
                    k % 2 == 0,
                )
            )
    return _run_parts(impl_text, opts, run_id, out_root, data_root, parts)


def _run_parts(impl_text: str, opts, run_id, out_root, data_root, parts: list):
    """The implementations once per part (heading, label, subfolder, config, reversed order) under
    OUT/<run-id>/<subfolder>/, all under the run folder's lock; a part finished earlier is kept."""
    from ..records.frames import load_runs
    from ..records.results import new_run_id
    from .folder import RunLock

    run_id = run_id or new_run_id()
    records = []
    with RunLock(Path(out_root) / run_id, opts.part):
        for heading, label, sub, cfg, reverse in parts:
            say(f"== {heading}")
            try:
                records += run_suite(
                    cfg, impl_text, opts, f"{run_id}/{sub}", out_root, data_root, reverse=reverse
                )[1]
            except AlreadyFinished:
                say(f"{label}: finished earlier, kept (--force re-runs it)")
                records += load_runs([Path(out_root) / run_id / sub])
    return Path(out_root) / run_id, records


def worker_counts(text: str | None, cfg, opts, rounds: bool = False) -> list[int]:
    """--workers as loader worker counts; for --task data without it, 0 up to the threads per process
    (the worker sweep); otherwise none (the config's benchmark.num_workers). ``rounds``: the command also
    asks for rounds (--repeats, --settings both), which --workers does not go with."""
    from . import launch

    if rounds and (text is not None or cfg.benchmark.task == "data"):
        raise RequestError(
            "--workers (and --task data's worker sweep) go without --repeats or --settings both "
            "(each worker count is one run)"
        )
    if text is None:
        if cfg.benchmark.task != "data":
            return []
        threads = (
            opts.threads_per_rank
            or cfg.benchmark.threads_per_rank
            or launch.default_threads(opts.nproc_per_node)
        )
        return list(range(threads + 1))
    if cfg.benchmark.task != "data":
        raise RequestError(f"--workers goes with --task data (this run's task is {cfg.benchmark.task})")
    return counts_of(text, "--workers", "worker counts", "0,1,2,4", least=0)


def counts_of(text: str, option: str, what: str, example: str, least: int) -> list[int]:
    """A comma-separated list of counts (--gpus of sweep, --workers), sorted, each once, each >= ``least``."""
    try:
        counts = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        raise RequestError(f"{option} {text!r}: expected {what} such as {example}") from None
    if not counts or counts[0] < least:
        raise RequestError(f"{option} {text!r}: expected {what} of at least {least}")
    return counts


def run_workers(cfg, impl_text: str, opts, run_id, out_root, data_root, counts: list[int]):
    """The implementations once per loader worker count (benchmark.num_workers), each count under
    OUT/<run-id>/w<N>/; counts finished earlier under the run id are kept. (run folder, records)"""
    return _run_parts(
        impl_text,
        opts,
        run_id,
        out_root,
        data_root,
        [
            (
                f"{n} loader worker(s)",
                f"{n} worker(s)",
                f"w{n}",
                cfg.with_overrides({"benchmark.num_workers": n}, source="--workers"),
                False,
            )
            for n in counts
        ],
    )


def runnable_impls(impl_text: str, interpreters: dict, device: str, local_world: int) -> list[str]:
    """The implementations of --impl that can run here: one named explicitly but not installed is a
    RequestError; with 'all' it is skipped and said so. On CUDA, enough devices must be visible."""
    from . import launch

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RequestError("--device cuda: no CUDA device is visible to this process (use --device cpu)")
        if torch.cuda.device_count() < local_world:
            raise RequestError(
                f"--gpus {local_world}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    runnable = []
    for name in parse_impls(impl_text):
        ok, info = launch.probe(name, launch.interpreter_for(name, interpreters))
        if ok:
            runnable.append(name)
            say(f"{name}: available ({info})")
        elif impl_text == "all":
            say(f"{name}: skipped, not installed: {info}")
        else:
            raise RequestError(f"--impl {name}: {info}")
    if not runnable:
        raise RequestError("no implementation is installed")
    return runnable


def run_suite(cfg, impl_text: str, opts, run_id, out_root, data_root, reverse: bool = False):
    """Probe, data, then (under the run folder's lock) resume, shared weights and every implementation
    in turn: (run folder, records)."""
    from ..data.check import enough_for_a_batch
    from ..data.datasets import resolve_data
    from ..parity.compare import check_divergences
    from ..records.results import new_run_id
    from .folder import RunLock

    local = opts.slurm.local_world if opts.slurm else opts.nproc_per_node
    runnable = runnable_impls(impl_text, opts.interpreters, cfg.benchmark.device, local)
    for name, divergences in check_divergences(cfg, runnable).items():
        for key, why in divergences.items():
            say(f"{name}: runs {key} otherwise (allowed): {why}")
    paths, summary = resolve_data(cfg.data, data_root)  # bad data: exit 2 before anything is written
    enough_for_a_batch(paths.train_json, summary["train"], cfg.solver.ims_per_batch)
    dropped = summary["train"].get("dropped")
    say(
        f"data: {summary['kind']} at {paths.root} ({summary['train']['images']} training images"
        + (
            f"; {dropped['annotations']} unusable annotation(s) and {dropped['short_polygons']} polygon(s) "
            "of "
            f"fewer than 3 points dropped for every implementation"
            if dropped
            else ""
        )
        + ")"
    )
    check_task(cfg, summary)
    run_id = run_id or new_run_id()
    with RunLock(
        Path(out_root) / run_id.split("/")[0], opts.part
    ):  # the run id's folder, whatever round this is
        return _run_locked(cfg, runnable, opts, Path(out_root), run_id, paths, summary, reverse)


def check_task(cfg, summary: dict) -> None:
    """What the task needs (harness/tasks: e.g. one process and a val split for infer and eval)."""
    from ..tasks import TaskError, task_of

    try:
        task_of(cfg.benchmark.task).check(cfg, summary)
    except TaskError as e:
        raise RequestError(str(e)) from None


def _run_locked(
    cfg, runnable: list[str], opts, out_root: Path, run_id: str, paths, summary: dict, reverse: bool
):
    """run_suite's part under the run folder's lock: resume, shared weights, the implementations."""
    from ..records.results import load_run
    from . import launch

    run_dir = out_root / run_id
    cfg = shared_weights(cfg, paths, training=True)
    kept = [] if opts.force else [i for i in runnable if launch.finished(run_dir, i)]
    kept_records = [load_run(run_dir / i) for i in kept]
    if kept:  # checked before anything else: a round of --repeats finished earlier is a resumed run too
        from .folder import resume_mismatches

        differ = resume_mismatches(kept_records, cfg.to_dict(), summary, machine(cfg, opts))
        if differ:
            raise RequestError(
                f"{run_dir}: resuming with other settings than the finished results of {', '.join(kept)} "
                f"({'; '.join(differ)}); pass --force to start the run afresh, or choose another --run-id"
            )
    todo = launch.plan_resume(run_dir, runnable[::-1] if reverse else runnable, opts.force)
    if kept:
        say(
            f"resuming run {run_id}: keeping the finished results of {', '.join(kept)} (--force re-runs them)"
        )
    resume = f"finished results are intact; re-run with --run-id {run_id.split('/')[0]} to resume"
    try:
        records = launch.run_suite(cfg, todo, paths, summary, out_root, run_id, opts)
    except KeyboardInterruptWithRecord as e:
        raise Interrupted(e.signum, f": {e.record['impl']} marked interrupted; {resume}") from None
    except KeyboardInterrupt as e:
        raise Interrupted(Interrupted.of(e).signum, f" between implementations; {resume}") from None
    return run_dir, kept_records + records


def machine(cfg, opts) -> dict:
    """What a resumed run's finished part must have run on: the CPU, the GPUs, the threads per process."""
    from ..records.results import cpu_model
    from . import launch

    gpus = []
    if cfg.benchmark.device == "cuda":
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    local = opts.slurm.local_world if opts.slurm else opts.nproc_per_node
    return {
        "cpu": cpu_model(),
        "gpus": gpus,
        "torch_threads": opts.threads_per_rank
        or cfg.benchmark.threads_per_rank
        or launch.default_threads(local),
    }


def shared_weights(cfg, paths, training: bool = False):
    """The config with the run's shared initial weights (and, ``training``, the shared pre-training of
    benchmark.shared_training_iters), each said when made or reused."""
    from .init_weights import WeightsError, with_shared_init
    from .shared_training import with_shared_training

    try:
        cfg, message = with_shared_init(cfg, paths)
    except WeightsError as e:
        raise RequestError(str(e)) from None
    if message:
        say(message)
    if training:
        cfg, message = with_shared_training(cfg, paths)
        if message:
            say(message)
    return cfg


def each_installed(impl: str, interpreters: dict, ask) -> tuple[dict, list[str]]:
    """({name: ask(name, python)} for every installed implementation --impl names, [names that failed]);
    one failing (RuntimeError) leaves the others' answers, one not installed is skipped and said so."""
    from . import launch

    answers, failed = {}, []
    for name in parse_impls(impl):
        python = launch.interpreter_for(name, interpreters)
        ok, info = launch.probe(name, python)
        if not ok:
            say(f"{name}: skipped, not installed: {info}")
            continue
        try:
            answers[name] = ask(name, python)
        except RuntimeError as e:
            say(f"{name}: failed: {e}")
            failed.append(name)
    return answers, failed


class RunFailed(Exception):
    """A run that started and failed as a whole (an external system's container); the command exits 1."""


def run_command(
    req: RunRequest,
    *,
    task,
    batch_sizes,
    gpus,
    launcher,
    nnodes,
    node_rank,
    master_addr,
    master_port,
    rdzv_timeout,
    container,
    workers,
    repeats,
):
    """``mrcnn-bench run`` (or a task's own command) after parsing: the checks of the launch options
    (RequestError: exit 2), then one of the paths: an external system, a worker sweep, rounds, one
    suite. (run folder, records, launch options, SLURM's task or None); None for an external system."""
    from mrcnn_bench.external import system_names

    from . import launch

    req = replace(req, overrides=req.overrides + tuple(task_overrides(task, batch_sizes)))
    if req.impl in system_names():
        run_external(req.impl, req.config(gpus), req.out_root, req.run_id, req.data_root, container)
        return None
    if container:
        raise RequestError(
            f"--container goes with an external system ({', '.join(system_names())}), not --impl {req.impl}"
        )
    slurm = None
    if launcher == "slurm":
        slurm = launch.slurm_task(master_port=master_port)
        gpus, nnodes, node_rank = slurm.local_world, slurm.nnodes, slurm.rank // slurm.local_world
    elif nnodes > 1 and not master_addr:
        raise RequestError(
            f"--nnodes {nnodes}: --master-addr is required (node 0's address, the same on every node)"
        )
    if node_rank >= nnodes:
        raise RequestError(
            f"--node-rank {node_rank} is out of range for --nnodes {nnodes} (0 to {nnodes - 1})"
        )
    rounds = repeats > 1 or bool(req.modes)
    if rounds and (nnodes > 1 or slurm):
        raise RequestError(
            "--repeats and --settings both run on one node; repeat a multi-node run by launching it again"
        )
    cfg = req.config(gpus * nnodes if gpus is not None else None, rounds=True)
    nproc = cfg.benchmark.gpus // nnodes
    if nproc * nnodes != cfg.benchmark.gpus:
        raise RequestError(f"benchmark.gpus={cfg.benchmark.gpus} is not divisible by --nnodes {nnodes}")
    opts = req.launch_options(
        nproc,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
        rdzv_timeout_s=rdzv_timeout,
        slurm=slurm,
    )
    where = (cfg, req.impl, opts, req.run_id, req.out_root, req.data_root)
    counts = worker_counts(workers, cfg, opts, rounds=rounds)
    if counts:
        run_dir, records = run_workers(*where, counts)
    elif rounds:
        run_dir, records = run_rounds(*where, repeats, req.modes)
    else:
        run_dir, records = run_suite(*where)
    return run_dir, records, opts, slurm


def run_external(name, cfg, out_root, run_id, data_root, container):
    """An external system: write its native config and the commands; with --container, docker and the
    image present, run it and ingest its log."""
    import shlex
    import shutil
    import subprocess

    from mrcnn_bench.external import get_system

    from ..records.ingest import ingest as read_log
    from ..records.results import atomic_write_text, new_run_id

    system = get_system(name)
    run_id = run_id or new_run_id()
    run_dir = (Path(out_root) / run_id / name).resolve()
    translation = system.translate(cfg)
    for filename, text in translation.files.items():
        atomic_write_text(run_dir / filename, text)
    image = container or system.image
    docker = system.docker_command(
        image or "<IMAGE>", str(run_dir), str(Path(data_root).resolve()) if data_root else None, translation
    )
    ingest_cmd = shlex.join(
        [
            "mrcnn-bench",
            "ingest",
            "--impl",
            name,
            str(run_dir / "train.log"),
            "--config",
            cfg.name,
            "--set",
            f"benchmark.gpus={cfg.benchmark.gpus}",
            "--out",
            str(out_root),
            "--run-id",
            run_id,
        ]
    )
    print(f"{system.title} ({system.home}): native config written to {run_dir}")
    for note in translation.mismatches:
        print(f"  cannot match: {note}")
    ready = (
        container
        and shutil.which("docker")
        and subprocess.run(["docker", "image", "inspect", container], capture_output=True).returncode == 0
    )
    if not ready:
        why = (
            "no --container given"
            if not container
            else "docker is not on PATH"
            if not shutil.which("docker")
            else f"image {container} is not present (docker pull/build it)"
        )
        print(
            f"\nnot run here ({why}). In the system's own container"
            + (f" (docker/external/{name}.Dockerfile builds {system.image})" if system.image else "")
            + ":\n\n"
            f"  {shlex.join(docker)}\n\nthen read its log into the results:\n\n  {ingest_cmd}"
        )
        return
    say(f"running: {shlex.join(docker)}")
    status = subprocess.run(docker).returncode
    if status != 0:
        raise RunFailed(f"{name}: the container exited {status}; its log: {run_dir / 'train.log'}")
    record = read_log(system, [run_dir / "train.log"], cfg, run_dir, run_id)
    print(f"{name}: {record['summary']['images_per_s']:.3f} img/s (measured_by: log)")


def ingest_logs(name: str | None, fmt: str, logs: list, cfg, out_root, run_id: str | None) -> str:
    """``mrcnn-bench ingest``: the logs read and written, and what it says of them."""
    from ..records.logs import LogError
    from ..records.results import new_run_id

    if fmt == "log":
        if not name:
            raise RequestError("--impl: name the external system whose log this is (mrcnn-bench list)")
        run_dir, record = ingest_log(name, logs, cfg, out_root, run_id)
        return ingested_text(name, record, run_dir)
    if name:
        raise RequestError("--impl: an MLPerf log names its own system (submission_org, submission_platform)")
    from ..records import mlperf

    try:
        written = mlperf.ingest(logs, cfg, out_root, run_id or new_run_id())
    except LogError as e:
        raise RequestError(str(e)) from None
    lines = []
    for folder, record in written:
        s = record["summary"]
        rate = f"{s['images_per_s']:.1f} img/s" if s["images_per_s"] is not None else "no img/s"
        lines.append(f"{record['environment']['system']}: {rate}, {len(s['runs'])} log(s); measured_by: log")
        lines += [f"  note: {note}" for note in record["from_log"]["notes"]]
        lines.append(f"results: {folder}")
    return "\n".join(lines)


def ingest_log(name: str, logs: list, cfg, out_root, run_id: str | None):
    """An external system's own training log(s) read into OUT/<run-id>/<name>/run.json: (run folder,
    record)."""
    from mrcnn_bench.external import get_system

    from ..records.ingest import ingest as read_log
    from ..records.logs import LogError
    from ..records.results import new_run_id

    try:
        system = get_system(name)
    except KeyError as e:
        raise RequestError(f"--impl: {e.args[0]}") from None
    run_dir = Path(out_root) / (run_id or new_run_id()) / name
    try:
        return run_dir, read_log(system, logs, cfg, run_dir, run_dir.parent.name)
    except LogError as e:
        raise RequestError(str(e)) from None


def implementations():
    """A line per implementation this harness knows: installed or not (and why), or external."""
    from mrcnn_bench.adapters import adapter_names
    from mrcnn_bench.external import get_system, system_names

    from . import launch

    for name in adapter_names():
        python = launch.interpreter_for(name, {})
        ok, info = launch.probe(name, python)
        yield f"{name:12s} {'installed' if ok else 'missing  '}  {info}  [{python}]"
    for name in system_names():
        system = get_system(name)
        yield (
            f"{name:12s} external   {system.title}: its own container, measured from its log "
            f"(`run --impl {name}` prints the commands)"
        )


def follower_done(records: list[dict], part: str, run_dir) -> str:
    """What a node (or SLURM task) that is not the leader says at its end: who writes the results, and how
    its own part of each failed run ended."""
    failed = [r for r in records if r["status"] != "ok"]
    return f"\nthis {part} is done; the results are written by {part} 0 under {run_dir}" + "".join(
        f"\n{r['impl']}: {r['status']}: {r['reason']}" for r in failed
    )


def ingested_text(name: str, record: dict, run_dir) -> str:
    """What `ingest` says of a log it read: the throughput, where it came from, its notes, where it went."""
    s = record["summary"]
    return "\n".join(
        [
            f"{name}: {s['images_per_s']:.3f} img/s over iterations [{s['warmup']}, {s['end']}) "
            f"from {record['environment']['log_format']} log(s); measured_by: log",
            *(f"  note: {note}" for note in record["from_log"]["notes"]),
            f"results: {run_dir}",
        ]
    )


# ------------------------------------------------------------------- the readers' commands: their checks
def report_command(paths, fmt: str, out, plots, title: str | None, into) -> str:
    """`mrcnn-bench report`: its options checked, the report put --into a page where asked; its text."""
    from ..report.tables import load_runs, write_report, write_report_into

    if title and fmt != "md":
        raise RequestError("--title goes with --format md")
    records = load_runs(paths)
    if not records:
        raise RequestError(f"{', '.join(paths)}: no run.json below; nothing to report")
    if into:
        try:
            write_report_into(Path(into), records, f"mrcnn-bench report {' '.join(paths)} --into {into}")
        except ValueError as e:
            raise RequestError(f"--into: {e}") from e
    preamble = (
        f"# {title}\n\n_Generated by `mrcnn-bench report {' '.join(paths)}`; do not edit by hand._\n\n"
        if title
        else None
    )
    return write_report(paths, fmt, out, plots, preamble, records)


@dataclass
class GateRequest:
    """`mrcnn-bench regress`'s options, as the command line gives them."""

    baseline: str | None
    candidate: str | None
    threshold: str
    confidence: float
    relative_to: str | None
    impls: str | None
    history_dir: str | None
    plot: str | None
    fmt: str
    allow_noisy: bool
    comment: str | None


def regress_command(req: GateRequest) -> tuple[str, list[str], int]:
    """`mrcnn-bench regress`: its options checked, then the gate (or --history's report). The text, the
    warnings, and the exit code (1: a regression, or an implementation failed or missing)."""
    from ..report import regress as gate

    try:
        threshold = gate.parse_threshold(req.threshold)
    except ValueError as e:
        raise RequestError(f"--threshold: {e}") from None
    impls = [i.strip() for i in req.impls.split(",") if i.strip()] if req.impls else None
    if req.history_dir:
        if req.baseline or req.candidate:
            raise RequestError("--history goes without --baseline/--candidate")
        return (
            gate.history_report(req.history_dir, req.relative_to, impls, threshold, req.plot, req.fmt),
            [],
            0,
        )
    if not (req.baseline and req.candidate):
        raise RequestError("--baseline and --candidate are required (or --history DIR)")
    try:
        results, failures, warnings = gate.regress(
            req.baseline, req.candidate, threshold, req.confidence, req.relative_to, impls, req.allow_noisy
        )
    except gate.NotComparable as e:
        raise RequestError(str(e)) from None
    if req.comment:
        Path(req.comment).write_text(
            gate.comment_text(results, failures, req.relative_to, req.confidence, warnings)
        )
    text = gate.verdict_text(results, failures, req.relative_to, req.confidence, req.fmt)
    return text, warnings, 1 if failures or any(r.regression for r in results) else 0


def phases_command(req: RunRequest, into, plots) -> tuple[Path, str, list[dict]]:
    """`mrcnn-bench phases`: a run of its own on one process with benchmark.phases; the phases table put
    --into a page where asked, the plot saved. The run folder, the table, the runs that failed."""
    from ..report.tables import phases_markdown, write_into

    cfg = req.config(1, {"benchmark.phases": True})  # one process
    run_dir, records = run_suite(
        cfg, req.impl, req.launch_options(cfg.benchmark.gpus), req.run_id, req.out_root, req.data_root
    )
    text = phases_markdown(records)
    if plots:
        from ..report.plots import phases_plot

        phases_plot(records, Path(plots) / "phases.png")
    if into and text:
        sets = "".join(f" --set {o}" for o in req.overrides)
        command = f"mrcnn-bench phases --impl {req.impl} --config {cfg.name}{sets} --into {into}"
        try:
            write_into(Path(into), text, command, "phases", cfg.name)
        except ValueError as e:
            raise RequestError(f"--into: {e}") from e
    return run_dir, text, [r for r in records if r["status"] != "ok"]
