"""Bad input stops with exit code 2 and a message naming the file and key, writing nothing; real faults
(a crash, a hang past --timeout, running out of memory, SIGKILL, Ctrl-C) mark that implementation and
leave the others' results intact; a re-run resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli
from mrcnn_bench.harness.records.results import load_run, read_jsonl

PLUGIN_ENV = {"MRCNN_BENCH_EXTRA_ADAPTERS": "plugin_adapters", "PYTHONPATH": str(ROOT / "tests")}
SHORT = [
    "--set",
    "benchmark.iters=8",
    "--set",
    "benchmark.warmup=2",
    "--set",
    "benchmark.window_end=8",
    "--threads",
    "1",
]


def _broken_data(root, tmp_path, how):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    ann = bad / "annotations" / "instances_train2017.json"
    coco = json.loads(ann.read_text())
    if how == "truncated":
        ann.write_text(ann.read_text()[: len(ann.read_text()) // 2])
    elif how == "absent":
        (bad / "train2017" / coco["images"][0]["file_name"]).unlink()
    elif how == "no_annotations":
        coco["annotations"] = []
        ann.write_text(json.dumps(coco))
    elif how == "negative_boxes":
        for a in coco["annotations"]:
            a["bbox"][2] = -a["bbox"][2]
        ann.write_text(json.dumps(coco))
    elif how == "short_polygon":  # one of ~30 annotations: more than the 1% dropped alike
        first = next(a for a in coco["annotations"] if not a["iscrowd"])
        first["id"], first["segmentation"] = 4242, [[1.0, 2.0, 5.0, 6.0]]
        ann.write_text(json.dumps(coco))
    elif how == "resized":
        coco["images"][0]["width"] += 10
        ann.write_text(json.dumps(coco))
    elif how == "exif":
        from PIL import Image

        path = bad / "train2017" / coco["images"][0]["file_name"]
        with Image.open(path) as im:
            exif = im.getexif()
            exif[0x0112] = 6  # rotate 90° clockwise to display
            im.save(path, exif=exif)
    return bad


@pytest.mark.parametrize(
    "case, args, expected",
    [
        (
            "missing config",
            ["--config", "/nonexistent/c.yaml"],
            r"/nonexistent/c.yaml: config file not found",
        ),
        ("config is a folder", ["--config", "{tmp}"], r": is a directory, expected a YAML config file"),
        ("config not text", ["--config", "{binary}"], r"binary.yaml: cannot read config file: not UTF-8"),
        ("unknown key", ["--set", "solver.lr=0.1"], r"unknown key 'solver.lr'"),
        (
            "infinite lr",
            ["--set", "solver.base_lr=.inf"],
            r"key 'solver.base_lr': Input should be a finite number",
        ),
        (
            "wrong type",
            ["--set", "benchmark.iters=ten"],
            r"key 'benchmark.iters': Input should be a valid integer.*'ten'",
        ),
        ("empty window", ["--set", "benchmark.warmup=40"], r"timed window \[warmup=40, end=30\) is empty"),
        (
            "batch vs --gpus",
            ["--gpus", "3"],
            r"solver.ims_per_batch=2 cannot be split evenly over 3 processes.*\n.*"
            r"This would run:\n  mrcnn-bench run .*--gpus 3 .*--ims-per-gpu 1",
        ),
        (
            "batch vs --set benchmark.gpus",
            ["--set", "benchmark.gpus=3"],
            r"ims_per_batch=2 is not divisible by benchmark.gpus \(3\)",
        ),
        ("missing data", ["--data", "/nonexistent/coco"], r"/nonexistent/coco: data directory not found"),
        (
            "truncated json",
            ["--data", "{truncated}"],
            r"instances_train2017.json: not valid JSON \(truncated or corrupt\?\)",
        ),
        ("images absent", ["--data", "{absent}"], r"1 image\(s\) listed under 'images' are absent from"),
        (
            "no annotations",
            ["--data", "{no_annotations}"],
            r"key 'annotations' is empty: nothing to train on",
        ),
        (
            "every box negative",
            ["--data", "{negative_boxes}"],
            r"instances_train2017.json: every annotation cannot be "
            r"trained on: annotation id 1: key 'bbox': expected width and height > 0, got -\d+\.0 x \d+\.0; "
            r".*and \d+ more",
        ),
        (
            "short polygons",
            ["--data", "{short_polygon}"],
            r"instances_train2017.json: 1 of \d+ annotations \(over 1%\) cannot "
            r"be trained on: annotation id 4242: key 'segmentation': expected a polygon of at least 3 points",
        ),
        (
            "size not the json's",
            ["--data", "{resized}"],
            r"instances_train2017.json: image id 1 \(.*000000000001.jpg\): the file "
            r"is (\d+)x\d+, the json says (?!\1)\d+x\d+",
        ),
        (
            "EXIF rotation",
            ["--data", "{exif}"],
            r"image id 1 \(.*\): EXIF orientation 6 \(expected none or 1\): detectron2 and mmdet "
            r"would rotate it",
        ),
        (
            "unknown impl",
            ["--impl", "maskrcnn9000"],
            r"--impl: unknown implementation\(s\) maskrcnn9000; known: ",
        ),
        (
            "not installed",
            ["--impl", "busy"],
            r"--impl busy: busy is not installed \(a test fixture\); install: pip install",
        ),
        (
            "no batch sizes",
            ["--task", "infer", "--batch-sizes", ""],
            r"--batch-sizes '': expected one or more positive integers",
        ),
        (
            "batch size 0",
            ["--task", "infer", "--batch-sizes", "0,2"],
            r"--batch-sizes '0,2': expected one or more positive integers",
        ),
        (
            "batch size not a number",
            ["--task", "infer", "--batch-sizes", "1,two"],
            r"--batch-sizes '1,two': expected positive integers",
        ),
        (
            "batch larger than the data",
            ["--task", "infer", "--batch-sizes", "1,16"],
            r"--batch-sizes 1,16: batch size 16 is larger than the val split \(8 images, data.val_split "
            r"val2017\)",
        ),
        (
            "infer on two processes",
            ["--task", "infer", "--gpus", "2", "--ims-per-gpu", "1"],
            r"--task infer runs on one process \(benchmark.gpus=2\): use --gpus 1",
        ),
    ],
)
@pytest.mark.e2e
def test_bad_input_exits_2_names_the_problem_and_writes_nothing(case, args, expected, tmp_path, synth_root):
    import re

    (tmp_path / "binary.yaml").write_bytes(b"name: \xff\xfe\n")
    subs = {"{tmp}": str(tmp_path), "{binary}": str(tmp_path / "binary.yaml")}
    for how in (
        "truncated",
        "absent",
        "no_annotations",
        "negative_boxes",
        "short_polygon",
        "resized",
        "exif",
    ):
        if f"{{{how}}}" in args:
            subs[f"{{{how}}}"] = str(_broken_data(synth_root, tmp_path, how))
    args = [subs.get(a, a) for a in args]
    if "--impl" not in args:
        args = ["--impl", "torchvision", *args]
    out_dir = tmp_path / "out"
    out = run_cli(
        "run", *args, "--out", out_dir, "--run-id", "x", env=dict(PLUGIN_ENV, MRCNN_TEST_UNAVAILABLE="busy")
    )
    assert out.returncode == 2, (case, out.stderr[-2000:])
    assert re.search(expected, out.stderr), (case, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert not out_dir.exists()  # nothing written


def _run(tmp_path, run_id, *extra, fault=None, impls="busy,busy_peer"):
    env = dict(PLUGIN_ENV)
    if fault:
        env["MRCNN_TEST_FAULT"] = fault
    return run_cli("run", "--impl", impls, "--out", tmp_path, "--run-id", run_id, *SHORT, *extra, env=env)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "fault, status, reason, recorded",
    [
        ("busy:crash@3", "failed", r"rank 0: RuntimeError: planted crash at iteration 3", 3),
        ("busy:oom@2", "oom", r"can't allocate memory", 2),
        ("busy:kill@2", "oom", r"killed by SIGKILL", 2),
    ],
)
def test_a_failing_implementation_is_recorded_and_the_others_run(tmp_path, fault, status, reason, recorded):
    import re

    out = _run(tmp_path, "f", fault=fault)
    assert out.returncode == 1, out.stderr[-2000:]
    failed = load_run(tmp_path / "f" / "busy")
    assert failed["status"] == status and re.search(reason, failed["reason"]), failed["reason"]
    assert failed["iterations_recorded"] == recorded
    assert [r["iter"] for r in read_jsonl(tmp_path / "f" / "busy" / "iterations.jsonl")] == list(
        range(recorded)
    )
    assert load_run(tmp_path / "f" / "busy_peer")["status"] == "ok"
    assert f"{status}: " in out.stdout  # the results table says why
    assert not list((tmp_path / "f").rglob(".*partial*"))


@pytest.mark.e2e
def test_a_hang_past_the_timeout_is_stopped(tmp_path):
    start = time.time()
    out = _run(tmp_path, "h", "--timeout", "20", fault="busy:hang@2")
    assert out.returncode == 1, out.stderr[-2000:]
    rec = load_run(tmp_path / "h" / "busy")
    assert rec["status"] == "timeout" and "--timeout" in rec["reason"] and rec["iterations_recorded"] == 2
    assert load_run(tmp_path / "h" / "busy_peer")["status"] == "ok"
    assert time.time() - start < 120
    assert not subprocess.run(
        ["pgrep", "-f", "MRCNN_TEST_FAULT"], capture_output=True
    ).stdout  # nothing left behind


@pytest.mark.e2e
def test_parity_checks_its_python_option_as_run_does():
    for command in (["parity"], ["parity", "--check-forward"], ["run"]):
        out = run_cli(*command, "--python", "detectron2")
        assert out.returncode == 2 and "--python 'detectron2': expected IMPL=PATH" in out.stderr, (
            command,
            out.stderr[-500:],
        )
        assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- one process group, one fate (issue 27)


def _workers_of(run_dir) -> list:
    """Live worker processes whose --run-dir is ``run_dir`` or below it (from the process list; torchrun,
    whose command line names the worker module too, is not one)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if (
            "mrcnn_bench.harness.run.worker" in cmd
            and any(c == str(run_dir) or c.startswith(f"{run_dir}/") for c in cmd)
            and "torch.distributed.run" not in cmd
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc)
    return found


@pytest.fixture
def start(tmp_path):
    """Starts `run --impl busy,busy_peer` in the background; whatever a failed test leaves is killed."""
    started = []

    def _start(run_id, fault, *extra):
        env = dict(os.environ, PYTHONUNBUFFERED="1", MRCNN_TEST_FAULT=fault, **PLUGIN_ENV)
        cmd = [
            sys.executable,
            "-m",
            "mrcnn_bench.harness.cli",
            "run",
            "--impl",
            "busy,busy_peer",
            "--out",
            str(tmp_path),
            "--run-id",
            run_id,
            *SHORT,
            *extra,
        ]
        started.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
        return started[-1]

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    for worker in _workers_of(tmp_path):
        worker.kill()


def _wait_for_iterations(proc, partial, n: int, within: float = 300):
    deadline = time.time() + within
    while time.time() < deadline and not (partial.is_file() and len(partial.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    assert partial.is_file(), (proc.kill(), proc.communicate(timeout=60))


@pytest.mark.e2e
def test_a_killed_launcher_leaves_no_worker_and_its_verdict_stands(tmp_path, start):
    """kill -9 of torchrun while busy trains (hanging at iteration 3, as a worker deaf to everything would):
    busy is recorded failed with the launcher's death as reason, no busy worker is alive while busy_peer
    is timed, and nothing rewrites busy's record afterwards."""
    import psutil

    proc = start("k", "busy:hang@3")
    busy, peer = tmp_path / "k" / "busy", tmp_path / "k" / "busy_peer"
    _wait_for_iterations(proc, busy / ".iterations.partial.jsonl", 3)
    assert len(_workers_of(busy)) == 1
    torchrun = [
        c for c in psutil.Process(proc.pid).children() if "torch.distributed.run" in " ".join(c.cmdline())
    ]
    assert len(torchrun) == 1
    torchrun[0].kill()
    seen_during_peer = None
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if seen_during_peer is None and (peer / ".iterations.partial.jsonl").is_file():
            seen_during_peer = _workers_of(busy)  # busy_peer is training now
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr[-2000:]
    assert seen_during_peer == [], seen_during_peer
    rec = load_run(busy)
    assert (
        rec["status"] == "failed"
        and "the launcher (torchrun, pid" in rec["reason"]
        and "SIGKILL" in rec["reason"]
    ), rec["reason"]
    assert rec["iterations_recorded"] == 3
    assert load_run(peer)["status"] == "ok"
    written = (busy / "run.json").read_bytes()
    time.sleep(2)
    assert (busy / "run.json").read_bytes() == written and _workers_of(busy) == []
    assert not list((tmp_path / "k").rglob(".worker-*")) and not (tmp_path / "k" / ".lock").exists()


@pytest.mark.e2e
def test_a_stop_signal_keeps_finished_results_marks_the_interrupted_one_and_resume_finishes(tmp_path, start):
    """SIGTERM (what a scheduler, `timeout` or a CI cancel sends; handled as Ctrl-C is, only the exit code
    differs: see test_stop_signals_map_to_their_exit_codes) while busy_peer trains; the run id is locked
    meanwhile; a lock file left behind is taken over; the re-run resumes; a finished run needs --force."""
    proc = start("c", "busy_peer:hang@3")
    peer = tmp_path / "c" / "busy_peer"
    # bounds for a loaded machine (here, alone: the partial file in ~11 s, the exit ~3 s after the signal)
    _wait_for_iterations(proc, peer / ".iterations.partial.jsonl", 3)
    assert len((peer / ".iterations.partial.jsonl").read_text().splitlines()) == 3
    finished = (tmp_path / "c" / "busy" / "run.json").read_bytes()
    second = _run(tmp_path, "c")  # a second command on the same run id while the first holds it
    assert (
        second.returncode == 2
        and f"run id in use by another mrcnn-bench command (pid {proc.pid})" in second.stderr
    ), second.stderr
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 143, stderr[-2000:]
    assert (
        "interrupted by SIGTERM: busy_peer marked interrupted" in stderr and "--run-id c to resume" in stderr
    )
    rec = load_run(peer)
    assert (
        rec["status"] == "interrupted"
        and rec["reason"].startswith("interrupted by SIGTERM")
        and rec["iterations_recorded"] == 3
    )
    assert (tmp_path / "c" / "busy" / "run.json").read_bytes() == finished
    assert _workers_of(peer) == []

    (tmp_path / "c" / ".lock").write_text("999999999\n")  # what a kill -9 leaves: taken over
    resumed = _run(tmp_path, "c")  # no fault now
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "keeping the finished results of busy" in resumed.stderr
    assert (tmp_path / "c" / "busy" / "run.json").read_bytes() == finished
    assert load_run(peer)["status"] == "ok"
    assert "busy_peer" in resumed.stdout and "busy " in resumed.stdout  # the table shows both

    again = _run(tmp_path, "c")
    assert again.returncode == 2 and "--force" in again.stderr
    forced = _run(tmp_path, "c", "--force", impls="busy")
    assert forced.returncode == 0 and (tmp_path / "c" / "busy" / "run.json").read_bytes() != finished


def test_stop_signals_map_to_their_exit_codes():
    from mrcnn_bench.harness.run.launch import Interrupted, KeyboardInterruptWithRecord

    assert (
        Interrupted.of(KeyboardInterrupt()).exit_code == 130
        and Interrupted.of(KeyboardInterrupt()).how == "by the user (Ctrl-C)"
    )
    assert Interrupted(signal.SIGTERM).exit_code == 143 and Interrupted(signal.SIGTERM).how == "by SIGTERM"
    assert Interrupted(signal.SIGHUP).exit_code == 129
    e = KeyboardInterruptWithRecord({"impl": "x"}, signal.SIGHUP)
    assert isinstance(e, KeyboardInterrupt) and e.exit_code == 129 and Interrupted.of(e) is e


@pytest.mark.e2e
def test_resuming_with_other_settings_is_refused_and_duplicates_run_once(tmp_path):
    first = _run(tmp_path, "r", fault="busy_peer:crash@2", impls="busy,busy_peer,busy")
    assert first.returncode == 1 and first.stderr.count("named more than once") == 1, first.stderr[-2000:]
    assert "== [1/2] busy:" in first.stderr and "== [3/" not in first.stderr  # busy ran once, of two
    other = _run(tmp_path, "r", "--set", "solver.base_lr=0.02")
    assert other.returncode == 2, other.stderr[-2000:]
    assert (
        "resuming with other settings than the finished results of busy (solver.base_lr: 0.0025 -> 0.02)"
        in other.stderr
    )
    threads = _run(tmp_path, "r", "--threads", "2")
    assert threads.returncode == 2 and "environment.torch_threads: 1 -> 2" in threads.stderr, threads.stderr[
        -2000:
    ]
    assert load_run(tmp_path / "r" / "busy_peer")["status"] == "failed"  # nothing was run
    forced = _run(tmp_path, "r", "--set", "solver.base_lr=0.02", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert {load_run(tmp_path / "r" / i)["config"]["solver"]["base_lr"] for i in ("busy", "busy_peer")} == {
        0.02
    }


def test_a_run_id_is_one_folder_name(tmp_path):
    from click.testing import CliRunner
    from mrcnn_bench.harness import cli

    for run_id in ("../escape", "/abs/path", "a/b", ".hidden", ".."):
        out = CliRunner().invoke(
            cli.main, ["run", "--impl", "torchvision", "--out", str(tmp_path / "out"), "--run-id", run_id]
        )
        assert out.exit_code == 2 and f"--run-id {run_id!r}: expected one folder name" in out.output, (
            out.output[-1000:]
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape").exists()


@pytest.mark.e2e
def test_an_unwritable_out_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("")
    for out_root in ("/sys/mrcnn-bench-out", tmp_path / "file" / "out"):
        out = run_cli("run", "--impl", "busy", "--out", out_root, "--run-id", "u", *SHORT, env=PLUGIN_ENV)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"Error: {out_root}" in out.stderr, out.stderr[-500:]


def test_a_worker_never_overwrites_the_launchers_verdict(tmp_path):
    from mrcnn_bench.harness.tasks.rank import write_final as _write_final

    (tmp_path / "run.json").write_text('{"status": "failed"}\n')
    with pytest.raises(RuntimeError, match="the launcher has already recorded this run"):
        _write_final(tmp_path, {"status": "ok"})
    assert json.loads((tmp_path / "run.json").read_text()) == {"status": "failed"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left
    _write_final(tmp_path / "fresh", {"status": "ok"})
    assert json.loads((tmp_path / "fresh" / "run.json").read_text()) == {"status": "ok"}


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, monkeypatch):
    """ENOSPC while a result is written (here `report --out`'s file; the same wrapper serves `run`): one
    line naming the file and what to do, exit 1, no traceback; an unwritable target is exit 2."""
    import errno

    from click.testing import CliRunner
    from mrcnn_bench.harness import cli
    from mrcnn_bench.harness.records import results

    def full(path, text, replace=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(results, "atomic_write_text", full)
    out = CliRunner().invoke(
        cli.main,
        ["report", str(ROOT / "results" / "baselines" / "cpu_small"), "--out", str(tmp_path / "r.md")],
    )
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), out.output[-1000:]
    assert (
        f"Error: {tmp_path / 'r.md'}: No space left on device; free space and re-run with the same --run-id "
        "to resume" in out.output
    )

    def denied(path, text, replace=True):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(results, "atomic_write_text", denied)
    out = CliRunner().invoke(
        cli.main,
        ["report", str(ROOT / "results" / "baselines" / "cpu_small"), "--out", str(tmp_path / "r.md")],
    )
    assert out.exit_code == 2 and f"Error: {tmp_path / 'r.md'}: Permission denied" in out.output, out.output[
        -1000:
    ]


def test_the_parts_of_one_multi_process_run_share_its_folder_but_not_a_lock(tmp_path):
    """Two SLURM tasks (or torchrun nodes) of one run on one host: each locks its own part and stops only
    its own ranks' leftover workers; two commands of the same part still exclude each other."""
    import socket

    from mrcnn_bench.harness.records.results import WORKER_PIDS
    from mrcnn_bench.harness.run.folder import RunLock
    from mrcnn_bench.harness.run.launch import LaunchOptions, SlurmTask, stop_leftover_workers

    tasks = [
        LaunchOptions(
            slurm=SlurmTask(
                rank=r, world=2, local_rank=r, local_world=2, nnodes=1, master_addr="127.0.0.1", master_port=1
            )
        )
        for r in (0, 1)
    ]
    nodes = [LaunchOptions(nproc_per_node=2, nnodes=2, node_rank=k) for k in (0, 1)]
    assert [o.part for o in tasks + nodes] == ["", "task1", "", "node1"]
    assert [list(o.ranks) for o in tasks + nodes] == [[0], [1], [0, 1], [2, 3]]
    with RunLock(tmp_path / "run", tasks[0].part), RunLock(tmp_path / "run", tasks[1].part):
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", ".lock-task1"]
        second = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from mrcnn_bench.harness.run.folder import RunLock; "
                "RunLock(sys.argv[1], 'task1').__enter__()",
                tmp_path / "run",
            ],
            capture_output=True,
            text=True,
        )
        assert (
            f"run id in use by another mrcnn-bench command (pid {os.getpid()}, as task1)" in second.stderr
        ), second.stderr
    # task 1's worker alive beside task 0's: task 0's end stops neither it nor touches its pid file
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        pid_file = tmp_path / WORKER_PIDS.format(host=socket.gethostname(), rank=1)
        pid_file.write_text(
            json.dumps({"pid": other.pid, "started": psutil.Process(other.pid).create_time()})
        )
        assert (
            stop_leftover_workers(tmp_path, tasks[0].ranks) is None
            and other.poll() is None
            and pid_file.exists()
        )
        assert (
            stop_leftover_workers(tmp_path, tasks[1].ranks, grace=5)
            == f"1 worker(s) left running (pid {other.pid}) were stopped"
        )
        assert other.wait(timeout=10) is not None and not pid_file.exists()
    finally:
        other.kill()
