"""The headline command as typed, strong and weak scaling, and launches beyond one node: two torchrun
"nodes" and two SLURM tasks on this machine, with gloo on localhost."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import TINY, run_cli
from mrcnn_bench.harness.config.schema import builtin_config_dir, load_config
from mrcnn_bench.harness.run.launch import LaunchError, first_host, slurm_task
from mrcnn_bench.harness.run.scaling import ScalingError, plan

CANONICAL = builtin_config_dir() / "mask_rcnn_R_50_FPN_noaug_1x.yaml"
SMALL = builtin_config_dir() / "cpu_small.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- plans
def test_strong_scaling_keeps_the_canonical_batch_and_accumulates_what_a_process_cannot_hold():
    cfg = load_config(CANONICAL)
    assert cfg.solver.ims_per_batch == 16 and cfg.benchmark.max_ims_per_step is None
    eight = plan(cfg, 8)
    assert (eight.mode, eight.global_batch, eight.ims_per_step, eight.grad_accum, eight.base_lr) == (
        "strong",
        16,
        2,
        1,
        0.02,
    )
    one = plan(cfg, 1)
    assert (one.global_batch, one.ims_per_step, one.grad_accum) == (16, 16, 1)
    capped = load_config(CANONICAL, {"benchmark.max_ims_per_step": 2})
    for world, steps in ((1, 8), (2, 4), (4, 2), (8, 1)):
        p = plan(capped, world)
        assert (p.global_batch, p.ims_per_step, p.grad_accum) == (16, 2, steps)
        scaled = load_config(
            CANONICAL, {**p.overrides(), "benchmark.max_ims_per_step": 2}
        )  # the config validates
        assert scaled.ims_per_process_step * world * scaled.benchmark.grad_accum == 16
    assert (
        plan(load_config(CANONICAL, {"benchmark.max_ims_per_step": 3}), 2).grad_accum == 4
    )  # 8 = 4 x 2, not 3 x 2.67


def test_weak_scaling_scales_the_batch_and_the_learning_rate_linearly():
    cfg = load_config(CANONICAL)
    for world in (1, 2, 8):
        p = plan(cfg, world, ims_per_gpu=4)
        assert (p.mode, p.global_batch, p.ims_per_step) == ("weak", 4 * world, 4)
        assert p.base_lr == pytest.approx(0.02 * 4 * world / 16)
        scaled = load_config(CANONICAL, p.overrides())
        assert (
            scaled.benchmark.scaling == "weak" and scaled.solver.warmup_iters == 1000
        )  # warm-up stays canonical


def test_a_batch_that_cannot_be_split_names_the_command_that_runs(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mrcnn-bench", "run", "--impl", "reference", "--gpus", "8"])
    with pytest.raises(ScalingError) as e:
        plan(load_config(SMALL), 8)
    assert e.value.command == "mrcnn-bench run --impl reference --gpus 8 --ims-per-gpu 1"
    assert "solver.ims_per_batch=2 cannot be split evenly over 8 processes" in str(e.value)


@pytest.mark.e2e
def test_the_headline_command_on_a_cpu_only_machine(tmp_path):
    out = run_cli("run", "--impl", "torchvision", "--gpus", "8", "--out", tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    first = out.stderr.splitlines()[0]
    assert (
        first
        == "config: cpu_small (no CUDA device visible; --config mask_rcnn_R_50_FPN_noaug_1x is the canonical "
        "benchmark)"
    )
    command = out.stderr.strip().splitlines()[-1].strip()
    assert command.startswith("mrcnn-bench run --impl torchvision --gpus 8") and command.endswith(
        "--ims-per-gpu 1"
    )
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


@pytest.mark.e2e
def test_bad_multi_node_input_is_refused_before_anything_starts(tmp_path):
    no_addr = run_cli("run", "--nnodes", "2", "--gpus", "1", "--device", "cpu", "--out", tmp_path)
    assert no_addr.returncode == 2 and "--nnodes 2: --master-addr is required" in no_addr.stderr
    out_of_range = run_cli(
        "run",
        "--nnodes",
        "2",
        "--node-rank",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--gpus",
        "1",
        "--out",
        tmp_path,
    )
    assert (
        out_of_range.returncode == 2
        and "--node-rank 2 is out of range for --nnodes 2 (0 to 1)" in out_of_range.stderr
    )
    no_slurm = run_cli(
        "run", "--launcher", "slurm", "--out", tmp_path, env={"SLURM_PROCID": "", "SLURM_NTASKS": ""}
    )
    assert no_slurm.returncode == 2 and "$SLURM_PROCID is not set" in no_slurm.stderr
    assert not any(tmp_path.iterdir())


def test_slurm_environment_is_read_as_srun_sets_it():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "5",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "4242",
    }
    task = slurm_task(env)
    assert (task.rank, task.world, task.local_rank, task.local_world, task.nnodes) == (5, 16, 5, 8, 2)
    assert task.master_addr == "gpu07" and task.master_port == 24242
    assert task.environment()["WORLD_SIZE"] == "16" and task.environment()["MASTER_ADDR"] == "gpu07"
    assert first_host("node1,node2") == "node1" and first_host("a[10,12-14],b3") == "a10"
    with pytest.raises(LaunchError, match=r"\$SLURM_LOCALID is not set"):
        slurm_task({k: v for k, v in env.items() if k != "SLURM_LOCALID"})


# ----------------------------------------------------------------------------- two launches
def _two(commands, envs, timeout=900):
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mrcnn_bench.harness.cli", *map(str, c)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **e},
        )
        for c, e in zip(commands, envs)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outs


COMMON = [
    "--impl",
    "reference",
    "--device",
    "cpu",
    "--threads",
    "1",
    *TINY,
    "--set",
    "benchmark.iters=3",
    "--set",
    "benchmark.warmup=1",
    "--set",
    "benchmark.window_end=3",
]


@pytest.mark.e2e
def test_two_torchrun_nodes_on_localhost_make_one_run(tmp_path, synth_root):
    port = free_port()
    node = [
        "run",
        *COMMON,
        "--data",
        synth_root,
        "--gpus",
        "1",
        "--nnodes",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
        "--run-id",
        "two-nodes",
    ]
    codes, outs = _two([[*node, "--node-rank", r, "--out", tmp_path / f"node{r}"] for r in (0, 1)], [{}, {}])
    assert codes == [0, 0], outs
    record = json.loads((tmp_path / "node0" / "two-nodes" / "reference" / "run.json").read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    env = record["environment"]
    assert (env["nodes"], env["processes_per_node"], env["launcher"], env["backend"]) == (
        2,
        1,
        "torchrun",
        "gloo",
    )
    assert record["config"]["benchmark"]["gpus"] == 2 and record["config"]["solver"]["ims_per_batch"] == 2
    # node 1 trained (its log) and wrote no result: a shared folder would hold one run.json
    assert not list((tmp_path / "node1").rglob("run.json"))
    assert (tmp_path / "node1" / "two-nodes" / "reference" / "log-node1.txt").is_file()
    assert "results are written by node 0" in outs[1]


@pytest.mark.e2e
def test_two_slurm_tasks_on_localhost_make_one_run(tmp_path, synth_root):
    port = free_port()
    base = {
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_JOB_ID": "7",
        "MASTER_ADDR": "127.0.0.1",
    }
    command = [
        "run",
        *COMMON,
        "--data",
        synth_root,
        "--launcher",
        "slurm",
        "--master-port",
        port,
        "--out",
        tmp_path,
        "--run-id",
        "srun",
    ]
    codes, outs = _two(
        [command, command], [{**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)]
    )
    assert codes == [0, 0], outs
    records = list(tmp_path.rglob("run.json"))
    assert len(records) == 1  # one shared folder, one result
    record = json.loads(records[0].read_text())
    assert record["status"] == "ok" and record["world_size"] == 2
    assert (record["environment"]["launcher"], record["environment"]["nodes"]) == ("slurm", 1)
    assert (tmp_path / "srun" / "reference" / "log-task1.txt").is_file()


@pytest.mark.e2e
def test_a_node_that_never_comes_times_out_naming_the_rendezvous(tmp_path, synth_root):
    port = free_port()
    out = run_cli(
        "run",
        *COMMON,
        "--data",
        synth_root,
        "--gpus",
        "1",
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
        "--rdzv-timeout",
        "5",
        "--out",
        tmp_path,
        "--run-id",
        "alone",
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    record = json.loads((tmp_path / "alone" / "reference" / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["reason"].startswith(f"rendezvous at 127.0.0.1:{port} timed out: not every node joined")
    assert "1/2 clients joined" in record["reason"]
    assert not (
        tmp_path / "alone" / "reference" / ".iterations.partial.jsonl"
    ).exists()  # nothing half-written


@pytest.mark.e2e
def test_sweep_runs_the_series_and_prints_the_scaling_table(tmp_path, synth_root):
    out = run_cli(
        "sweep",
        "--gpus",
        "1,2",
        *COMMON,
        "--data",
        synth_root,
        "--out",
        tmp_path,
        "--run-id",
        "s",
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = {n: json.loads((tmp_path / f"s-g{n}" / "reference" / "run.json").read_text()) for n in (1, 2)}
    assert [records[n]["world_size"] for n in (1, 2)] == [1, 2]
    assert all(
        r["config"]["solver"]["ims_per_batch"] == 2 and r["config"]["benchmark"]["scaling"] == "strong"
        for r in records.values()
    )
    table = out.stdout.split("### Scaling")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| reference ")]
    assert len(rows) == 2 and all("| strong " in r for r in rows) and "Efficiency vs N=1" in table
    bad = run_cli("sweep", "--gpus", "1,x", "--out", tmp_path)
    assert bad.returncode == 2 and "expected process counts such as 1,2,4,8" in bad.stderr


def test_the_headline_command_on_an_8_gpu_node_runs_the_canonical_benchmark(monkeypatch, tmp_path):
    """As typed on a node with 8 GPUs (CUDA faked: the launch itself is replaced by a capture)."""
    import torch
    from click.testing import CliRunner
    from mrcnn_bench.harness import cli
    from mrcnn_bench.harness.run import suite

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    seen = {}

    def capture(cfg, impl_text, opts, run_id, out_root, data_root):
        seen.update(cfg=cfg, impl=impl_text, opts=opts)
        return tmp_path, []

    monkeypatch.setattr(suite, "run_suite", capture)
    result = CliRunner().invoke(cli.main, ["run", "--impl", "reference", "--gpus", "8"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "config: mask_rcnn_R_50_FPN_noaug_1x (8 CUDA device(s) visible)"
    cfg, opts = seen["cfg"], seen["opts"]
    assert (
        cfg.name,
        cfg.benchmark.device,
        cfg.benchmark.gpus,
        cfg.ims_per_process_step,
        cfg.benchmark.grad_accum,
    ) == ("mask_rcnn_R_50_FPN_noaug_1x", "cuda", 8, 2, 1)
    assert (cfg.solver.ims_per_batch, cfg.solver.base_lr, cfg.benchmark.scaling) == (16, 0.02, "strong")
    assert (opts.nproc_per_node, opts.nnodes, opts.world_size, opts.leader) == (8, 1, 8, True)
    assert "strong scaling: 8 process(es), global batch 16 (2 image(s) per process per step)" in result.output
