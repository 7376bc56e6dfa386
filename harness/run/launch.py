"""Start one fresh process group per implementation through torch.distributed's launcher.

Each implementation runs as ``python -m torch.distributed.run ... -m mrcnn_bench.harness.run.worker``
with its own interpreter (so frameworks with clashing pins can live in separate venvs). A crash, a
hang past the time limit or an out-of-memory kill marks that implementation failed, with its reason
and the iterations it did record; the next implementation still runs. Ctrl-C, SIGTERM and SIGHUP mark
the running one interrupted and leave every finished result as it was.

One process group, one fate: torchrun starts each worker in a session of its own, so a killed torchrun
would leave its workers training beside the next implementation. Each worker therefore leaves its pid
in the run folder (``WORKER_PIDS``) and watches its launcher and this process (``worker.Watchdog``);
whatever is left when the launcher has ended is stopped here before the verdict is written, and the
verdict is final: a worker writes run.json only where none exists.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import settings
from ..data import check as data_check
from ..machine.telemetry import RunWatch
from ..records.results import (
    PARTIAL_ITERATIONS,
    WORKER_PIDS,
    ResultError,
    atomic_write_json,
    atomic_write_jsonl,
    capture_environment,
    make_run_record,
)
from ..tasks import task_of

REPO_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(RuntimeError):
    """A run that cannot start (the message says why); nothing was written."""


class AlreadyFinished(LaunchError):
    """Every implementation asked for has finished results under the run id (and no --force)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM (a scheduler, `timeout`, a CI cancel) or SIGHUP (the terminal closed),
    all handled as Ctrl-C is; the command exits with 128 + the signal's number."""

    def __init__(self, signum: int = signal.SIGINT, detail: str = ""):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.detail = signum, detail  # detail: what was stopped and what to do, after ``how``

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def how(self) -> str:
        return (
            "by the user (Ctrl-C)"
            if self.signum == signal.SIGINT
            else f"by {signal.Signals(self.signum).name}"
        )

    @property
    def message(self) -> str:
        return f"interrupted {self.how}{self.detail}"

    @staticmethod
    def of(e: BaseException) -> Interrupted:
        return e if isinstance(e, Interrupted) else Interrupted()


def interrupt_on_stop_signals() -> None:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, as SIGINT raises
    KeyboardInterrupt."""

    def _raise(signum, frame):
        raise Interrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise)


class _SignalsHeld:
    """Stop signals ignored while an interrupted implementation is stopped and recorded (a second
    SIGTERM must not cut its record short); the handlers in force are restored after."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __enter__(self):
        self.saved = {s: signal.signal(s, signal.SIG_IGN) for s in self.SIGNALS}

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)


@dataclass
class LaunchOptions:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    threads_per_rank: int | None = None
    timeout_s: float | None = None
    force: bool = False
    interpreters: dict[str, str] = field(default_factory=dict)
    rdzv_timeout_s: float = 600.0  # how long the nodes wait for each other at start
    slurm: SlurmTask | None = None  # --launcher slurm: this process is one task of an srun

    @property
    def world_size(self) -> int:
        return self.slurm.world if self.slurm else self.nproc_per_node * self.nnodes

    @property
    def leader(self) -> bool:
        """Whether this launch writes the results (node 0, or SLURM's task 0); the others only train."""
        return self.slurm.rank == 0 if self.slurm else self.node_rank == 0

    @property
    def ranks(self) -> range:
        """The global ranks this launch starts (its workers' pid files are these ranks' only: the tasks or
        nodes of one run may share a host and a run folder)."""
        if self.slurm:
            return range(self.slurm.rank, self.slurm.rank + 1)
        return range(self.node_rank * self.nproc_per_node, (self.node_rank + 1) * self.nproc_per_node)

    @property
    def part(self) -> str:
        """This launch's part of a run: '' for the leader, else ``task<N>`` or ``node<N>`` (its log's and
        its run-folder lock's suffix)."""
        if self.leader:
            return ""
        return f"task{self.slurm.rank}" if self.slurm else f"node{self.node_rank}"

    @property
    def endpoint(self) -> str:
        if self.slurm:
            return f"{self.slurm.master_addr}:{self.slurm.master_port}"
        return f"{self.master_addr or '127.0.0.1'}:{self.master_port or 29500}"


@dataclass(frozen=True)
class SlurmTask:
    """One task of ``srun``: its rank and the job's geometry, from SLURM's environment."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    nnodes: int
    master_addr: str
    master_port: int

    def environment(self) -> dict[str, str]:
        """What torch.distributed's env:// initialisation and the worker read."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "MRCNN_BENCH_LAUNCHER": "slurm",
        }


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-05,09],cpu1" -> "gpu03"), as ``scontrol show
    hostnames`` would give it."""
    prefix, first = re.match(r"([^,\[]*)(?:\[([^\],-]*))?", nodelist).groups()
    return prefix + (first or "")


def slurm_task(environ: dict[str, str] | None = None, master_port: int | None = None) -> SlurmTask:
    """This process's task in the SLURM job (srun), or LaunchError naming the variable that is missing."""
    env = os.environ if environ is None else environ

    def need(name: str) -> str:
        if not env.get(name):
            raise LaunchError(
                f"--launcher slurm: ${name} is not set; start the benchmark with srun inside an "
                "allocation (sbatch/salloc), one task per GPU"
            )
        return env[name]

    rank, world = int(need("SLURM_PROCID")), int(need("SLURM_NTASKS"))
    nnodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    local_world = int(str(env.get("SLURM_NTASKS_PER_NODE") or world // nnodes).split("(")[0])
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or need("SLURM_JOB_NODELIST")
    port = master_port or int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    return SlurmTask(
        rank=rank,
        world=world,
        local_rank=int(need("SLURM_LOCALID")),
        local_world=local_world,
        nnodes=nnodes,
        master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
        master_port=port,
    )


def interpreter_for(impl: str, interpreters: dict[str, str]) -> str:
    """--python IMPL=PATH, else $MRCNN_BENCH_PYTHON_<IMPL>, else .venvs/<impl>/bin/python, else this one."""
    if impl in interpreters:
        return interpreters[impl]
    env = os.environ.get(f"MRCNN_BENCH_PYTHON_{impl.upper()}")
    if env:
        return env
    venv = REPO_ROOT / ".venvs" / impl / "bin" / "python"
    if venv.is_file():
        return str(venv)
    return sys.executable


def probe(impl: str, python: str, timeout: float = 180.0) -> tuple[bool, str]:
    """Ask the implementation's own interpreter whether it can run ``impl`` (no framework import here)."""
    try:
        out = subprocess.run(
            [python, "-m", "mrcnn_bench.harness.parity.probe", "available", impl],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"interpreter {python} could not run: {e}"
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return False, f"{python} -m mrcnn_bench.harness.parity.probe failed: {tail[0]}"
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    return bool(answer["available"]), answer["info"]


def default_threads(nproc_per_node: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc_per_node)


def _launcher_args(opts: LaunchOptions) -> list[str]:
    args = ["--nproc-per-node", str(opts.nproc_per_node)]
    if opts.nnodes == 1 and opts.master_addr is None:
        # --standalone: a local c10d rendezvous on a free port, as torchrun recommends for one node.
        return ["--standalone", *args]
    args += ["--nnodes", str(opts.nnodes), "--node-rank", str(opts.node_rank)]
    args += [
        "--master-addr",
        opts.master_addr or "127.0.0.1",
        "--master-port",
        str(opts.master_port or 29500),
    ]
    args += ["--rdzv-conf", f"timeout={int(opts.rdzv_timeout_s)}"]  # how long node 0 waits for the others
    return args


def read_partial(run_dir: Path) -> list[dict]:
    """The iterations a killed worker had streamed, tolerating a cut last line."""
    path = run_dir / PARTIAL_ITERATIONS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _error_reports(run_dir: Path) -> list[dict]:
    reports = []
    for p in sorted(run_dir.glob("error-rank*.json")):
        try:
            reports.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return reports


class _Streamer(threading.Thread):
    """Copies a worker group's output to a log file and (prefixed) to our stderr, keeping a tail."""

    def __init__(self, stream, log_path: Path, prefix: str):
        super().__init__(daemon=True)
        self.stream, self.log_path, self.prefix = stream, log_path, prefix
        self.tail: collections.deque[str] = collections.deque(maxlen=60)

    def run(self):
        with open(self.log_path, "a") as log:
            for line in iter(self.stream.readline, ""):
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip("\n"))
                sys.stderr.write(f"{self.prefix}{line}")
                sys.stderr.flush()


def _diagnose(tail: list[str], returncode: int, endpoint: str = "?") -> tuple[str, str]:
    """(status, reason) from what a failed worker group printed."""
    text = "\n".join(tail)
    if (
        "waiting for clients" in text
        or ("DistNetworkError" in text and "connect" in text)
        or "Timed out after" in text
    ):
        joined = next((ln.strip() for ln in tail if "clients joined" in ln or "connect" in ln), "")
        return "failed", f"rendezvous at {endpoint} timed out: not every node joined ({joined})"
    if "Signal 9 (SIGKILL)" in text or returncode in (-9, 137):
        return "oom", "a worker was killed by SIGKILL (most often the kernel's out-of-memory killer)"
    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return "oom", "out of memory"
    errors = [
        ln.strip() for ln in tail if ("Error" in ln or "error:" in ln) and not ln.lstrip().startswith("File ")
    ]
    reason = errors[-1] if errors else (tail[-1].strip() if tail else f"exit code {returncode}")
    return "failed", reason


def run_implementation(
    impl: str,
    cfg,
    data_paths,
    data_summary: dict,
    run_dir: Path,
    run_id: str,
    opts: LaunchOptions,
) -> dict:
    """Run one implementation to its end and return its run record (written to run.json by rank 0 of
    the leader's part: node 0, or SLURM's task 0; the other nodes train, log to log-<node>.txt and write
    no result, so a shared results folder holds one run.json). The launcher writes a record only where
    the workers could not: a timeout, a failure, an interruption."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_name = f"log-{opts.part}.txt" if opts.part else "log.txt"
    _clear_earlier_attempt(run_dir, opts)
    started = time.time()
    cmd, env = _worker_command(impl, cfg, data_paths, data_summary, run_dir, run_id, opts, started)
    timeout = opts.timeout_s or cfg.benchmark.timeout_s
    watch = RunWatch(
        cfg, run_dir, opts.nproc_per_node, opts.part
    )  # the machine's state now; its samples while it runs
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: a timeout or Ctrl-C reaches every rank
    )
    streamer = _Streamer(proc.stdout, run_dir / log_name, f"[{impl}] ")
    streamer.start()
    watch.start(proc.pid)
    status, reason = None, None
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            status, reason = (
                "timeout",
                f"no result after {timeout:.0f} s (--timeout); the worker group was stopped",
            )
        finally:
            watch.stop()
    except KeyboardInterrupt as e:
        interrupted = Interrupted.of(e)
        with _SignalsHeld():
            _stop_group(proc, first=signal.SIGINT)
            left = stop_leftover_workers(run_dir, opts.ranks)
            streamer.join(timeout=5)
            reason = f"interrupted {interrupted.how}" + (f"; {left}" if left else "")
            record = (
                _kept(
                    watch,
                    _failure_record(impl, cfg, run_dir, run_id, opts, "interrupted", reason, started),
                    run_dir,
                )
                if opts.leader
                else {
                    "impl": impl,
                    "run_id": run_id,
                    "status": "interrupted",
                    "reason": reason,
                    "follower": True,
                }
            )
        raise KeyboardInterruptWithRecord(record, interrupted.signum) from None
    left = stop_leftover_workers(run_dir, opts.ranks)
    streamer.join(timeout=10)
    if status is None and proc.returncode < 0 and not opts.slurm:
        # torchrun itself ended by a signal (a worker's death makes it exit 1, naming the signal)
        status, reason = (
            "failed",
            (
                f"the launcher (torchrun, pid {proc.pid}) was killed by "
                f"{signal.Signals(-proc.returncode).name}" + (f"; {left}" if left else "")
            ),
        )
    record = _verdict(
        impl,
        cfg,
        run_dir,
        run_id,
        opts,
        status,
        reason,
        proc.returncode,
        list(streamer.tail),
        log_name,
        started,
    )
    return _kept(watch, record, run_dir) if opts.leader else record


def _clear_earlier_attempt(run_dir: Path, opts: LaunchOptions) -> None:
    """A worker writes run.json only where there is none: an earlier attempt's goes first (the leader's
    files), and this launch's ranks' pid files."""
    if opts.leader:
        for stale in [
            run_dir / PARTIAL_ITERATIONS,
            *run_dir.glob("error-rank*.json"),
            run_dir / "log.txt",
            run_dir / "run.json",
        ]:
            stale.unlink(missing_ok=True)
    for stale in _worker_pid_files(run_dir, opts.ranks):
        stale.unlink(missing_ok=True)


def _kept(watch: RunWatch, record: dict, run_dir: Path) -> dict:
    """The leader's record with the machine's state, the window's telemetry and the noise, as run.json."""
    record = watch.complete(record)
    atomic_write_json(run_dir / "run.json", record)
    return {
        **record,
        "_path": str(run_dir / "run.json"),
    }  # where it lies, as load_run gives it (the report links files)


def _worker_command(
    impl, cfg, data_paths, data_summary: dict, run_dir: Path, run_id: str, opts: LaunchOptions, started: float
) -> tuple[list[str], dict]:
    """launch.json (what every rank reads) written, and the command and environment that start the workers."""
    local_world = opts.slurm.local_world if opts.slurm else opts.nproc_per_node
    threads = opts.threads_per_rank or cfg.benchmark.threads_per_rank or default_threads(local_world)
    atomic_write_json(
        run_dir / "launch.json",
        {
            "run_id": run_id,
            "config": cfg.to_dict(),
            "data_paths": data_paths.to_dict(),
            "data_summary": data_summary,
            # the training split's class count and usable images: the workers parse no annotation file
            "data_index": data_check.registered(),
            "threads_per_rank": threads,
            "started": started,  # the launch's start (epoch seconds): run.json's wall_s counts from it
        },
    )
    python = interpreter_for(impl, opts.interpreters)
    # torchrun starts a node's processes; under SLURM each task is one process, started by srun
    cmd = [python] if opts.slurm else [python, "-m", "torch.distributed.run", *_launcher_args(opts)]
    cmd += ["-m", "mrcnn_bench.harness.run.worker", "--impl", impl, "--run-dir", str(run_dir)]
    env = dict(os.environ, **(opts.slurm.environment() if opts.slurm else {}))
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
        TORCHELASTIC_ERROR_FILE=str(run_dir / "torchelastic-error.json"),
        MRCNN_BENCH_PID=str(os.getpid()),  # the worker's watchdog: it exits when this process is gone
    )
    return cmd, settings.with_environment(
        env, cfg, impl
    )  # --best: the process settings of this implementation


def _verdict(
    impl,
    cfg,
    run_dir: Path,
    run_id: str,
    opts: LaunchOptions,
    status: str | None,
    reason: str | None,
    returncode: int,
    tail: list[str],
    log_name: str,
    started: float,
) -> dict:
    """How the workers ended, as a record: the workers' own run.json when they finished; else the error
    they reported, or what their output and exit code say (written to run.json by the leader)."""
    if not opts.leader:  # the leader writes the result; this node says only how its part ended
        if status is None:
            status, reason = ("ok", None) if returncode == 0 else _diagnose(tail, returncode, opts.endpoint)
        return {
            "impl": impl,
            "run_id": run_id,
            "status": status,
            "reason": reason,
            "follower": True,
            "world_size": opts.world_size,
            "log": str(run_dir / log_name),
        }
    if status is None:
        if returncode == 0 and (run_dir / "run.json").is_file():
            return json.loads((run_dir / "run.json").read_text())
        reports = _error_reports(run_dir)
        if reports:
            status, reason = reports[0]["status"], f"rank {reports[0]['rank']}: {reports[0]['error']}"
        else:
            status, reason = _diagnose(tail, returncode, opts.endpoint)
    return _failure_record(impl, cfg, run_dir, run_id, opts, status, reason, started)


def _worker_pid_files(run_dir: Path, ranks: range) -> list[Path]:
    host = socket.gethostname()
    return [p for p in (run_dir / WORKER_PIDS.format(host=host, rank=r) for r in ranks) if p.exists()]


def stop_leftover_workers(run_dir: Path, ranks: range, grace: float = 10.0) -> str | None:
    """Stop this host's workers of ``run_dir`` among ``ranks`` (this launch's) that are still alive once
    their launcher has ended (its own session's signal does not reach them); returns what was stopped, or
    None. A pid is taken as the worker's only while its start time is the one the worker wrote (a reused
    pid is left alone)."""
    import psutil

    alive = []
    for path in _worker_pid_files(run_dir, ranks):
        try:
            info = json.loads(path.read_text())
            proc = psutil.Process(info["pid"])
            if abs(proc.create_time() - info["started"]) < 1e-3 and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        path.unlink(missing_ok=True)
    if not alive:
        return None
    for proc in alive:
        proc.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace)
    for proc in still:
        proc.kill()
    psutil.wait_procs(still, timeout=grace)
    pids = ", ".join(str(p.pid) for p in alive)
    return f"{len(alive)} worker(s) left running (pid {pids}) were stopped"


class KeyboardInterruptWithRecord(Interrupted):
    """An implementation interrupted part-way: its record (written by the leader) goes with it."""

    def __init__(self, record: dict, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.record = record


def _stop_group(proc: subprocess.Popen, first: int = signal.SIGTERM, grace: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, first)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _failure_record(
    impl, cfg, run_dir: Path, run_id: str, opts: LaunchOptions, status: str, reason: str, started: float
) -> dict:
    rows = read_partial(run_dir)
    atomic_write_jsonl(run_dir / "iterations.jsonl", rows)
    (run_dir / PARTIAL_ITERATIONS).unlink(missing_ok=True)
    record = make_run_record(
        impl=impl,
        run_id=run_id,
        status=status,
        reason=reason,
        config=cfg.to_dict(),
        environment=capture_environment(cfg.benchmark.device),
        world_size=opts.world_size,
        device=cfg.benchmark.device,
        dtype=cfg.benchmark.dtype,
        window={"warmup": cfg.benchmark.warmup, "end": cfg.benchmark.end, "iters": cfg.benchmark.iters},
        iterations_recorded=len(rows),
        extra={
            "wall_s": round(time.time() - started, 2),
            "log": str(run_dir / "log.txt"),
            "settings": settings.record(cfg, impl),
        },
    )
    atomic_write_json(run_dir / "run.json", record)
    return record


def finished(run_root: Path, impl: str) -> bool:
    """Whether ``impl`` already has a successful result under ``run_root``."""
    path = run_root / impl / "run.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, json.JSONDecodeError):
        return False


def plan_resume(run_root: Path, impls: list[str], force: bool) -> list[str]:
    """The implementations to run under an existing run id: without --force, finished ones are
    kept (a re-run resumes after a failure or Ctrl-C); if all are finished, refuse."""
    if force:
        return list(impls)
    todo = [i for i in impls if not finished(run_root, i)]
    if not todo:
        raise AlreadyFinished(
            f"{run_root}: finished results exist for {', '.join(impls)}; pass --force to overwrite, "
            "or choose another --run-id"
        )
    return todo


def run_suite(cfg, impls, data_paths, data_summary, out_root: Path, run_id: str, opts: LaunchOptions):
    """Run each implementation in turn; returns their records (failed ones included)."""
    run_root = Path(out_root) / run_id
    records = []
    for n, impl in enumerate(impls, 1):
        bench = cfg.benchmark
        work = task_of(bench.task).work(bench)
        print(
            f"== [{n}/{len(impls)}] {impl}: {work}, {opts.world_size} process(es) on {bench.device}",
            file=sys.stderr,
            flush=True,
        )
        try:
            record = run_implementation(impl, cfg, data_paths, data_summary, run_root / impl, run_id, opts)
        except ResultError as e:
            raise LaunchError(str(e)) from None
        records.append(record)
        if record["status"] != "ok":
            print(f"== {impl}: {record['status']}: {record['reason']}", file=sys.stderr, flush=True)
    return records
