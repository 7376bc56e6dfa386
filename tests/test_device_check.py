"""scripts/device_check.sh, the one command a GPU machine runs, rehearsed on the CPU; and the wheel set
(scripts/wheel_closure.py) that it installs there."""

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "device_check.sh"
STEPS = [
    "install",
    "cuda-tests",
    "fp32",
    "amp",
    "report",
    "mmdet-wait",
    "mmdet-fp32",
    "mmdet-amp",
    "report-mmdet",
    "levers",
    "phases",
    "kernels",
    "data",
    "trace",
    "infer",
]


def rehearse(out: Path, *args: str, timeout: int = 1800):
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--rehearse", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return proc, steps


def test_steps_that_cannot_fit_the_budget_are_skipped_and_said_so(tmp_path):
    proc, steps = rehearse(tmp_path, "--budget", "20", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_name = {s["step"]: s for s in steps}
    assert by_name["install"]["status"] == "not run"
    for name in ("cuda-tests", "fp32", "amp", "mmdet-wait", "levers", "phases", "data", "trace"):
        assert by_name[name]["status"] == "skipped", by_name[name]
        assert "s left of the 20 s budget, needs" in by_name[name]["note"]
    assert by_name["report"] == {
        "step": "report",
        "status": "skipped",
        "seconds": 0,
        "note": "no run to report",
    }
    summary = (tmp_path / "summary.md").read_text()
    assert "| fp32 | skipped (" in summary
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        assert "results/machine.txt" in tar.getnames()


@pytest.mark.e2e
@pytest.mark.long  # every step of the device check, all four implementations: 9 minutes here
def test_rehearsal_runs_every_step_and_brings_back_few_files(tmp_path):
    proc, steps = rehearse(tmp_path, "--budget", "1500")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [s["step"] for s in steps] == STEPS
    status = {s["step"]: s["status"] for s in steps}
    assert status["install"] == "not run"
    for name in (
        "cuda-tests",
        "fp32",
        "report",
        "mmdet-wait",
        "mmdet-fp32",
        "report-mmdet",
        "levers",
        "phases",
        "kernels",
        "data",
        "trace",
    ):
        assert status[name] == "ok", (name, steps)
    # AMP on the CPU is bf16, which detectron2 v0.6 and mmengine refuse there: those steps fail, with
    # those runs failed and their reasons, the others ok
    assert status["amp"] == "failed" and status["mmdet-amp"] == "failed"
    infer = next(s for s in steps if s["step"] == "infer")  # the shared training takes minutes on a CPU
    assert infer["status"] == "skipped" and "tests/test_inference.py" in infer["note"]
    # the device tool brings back at most 8 files, no deeper than two folders
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "device_check.log",
        "results.tar.gz",
        "steps.jsonl",
        "summary.md",
        "traces.tar",
    ]
    with tarfile.open(tmp_path / "traces.tar") as tar:
        assert {
            f"results/trace/{i}/trace-{i}.json.gz"
            for i in ("reference", "torchvision", "detectron2", "mmdet")
        } <= set(tar.getnames())

    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        names = set(tar.getnames())

        def load(name):
            return json.load(tar.extractfile(f"results/{name}"))

        for run_id, impls in (
            ("fp32", ("reference", "torchvision", "detectron2", "mmdet")),
            ("amp", ("reference", "torchvision")),
        ):
            for impl in impls:
                record = load(f"{run_id}/{impl}/run.json")
                assert record["status"] == "ok", (run_id, impl, record.get("reason"))
                assert record["window"] == {"warmup": 1, "end": 3, "iters": 3}
                assert record["dtype"] == {"fp32": "fp32", "amp": "bf16"}[run_id]
                # one process with 2 images: weak scaling at the config's own batch, the lr unchanged
                assert (
                    record["config"]["benchmark"]["scaling"] == "weak"
                    and record["config"]["solver"]["ims_per_batch"] == 2
                )
        for impl, why in (("detectron2", "fp16 only"), ("mmdet", "needs a GPU")):
            refused = load(f"amp/{impl}/run.json")
            assert refused["status"] == "failed" and why in refused["reason"]
        junit = tar.extractfile("results/cuda-tests.xml").read().decode()
        assert 'tests="' in junit and 'failures="0"' in junit and 'errors="0"' in junit
        report = tar.extractfile("results/report.md").read().decode()
        assert "reference" in report and "mmdet" in report
        assert {"results/plots/throughput.png", "results/machine.txt"} <= names
        # the input pipeline alone, four loaders at 0 and 1 workers: the stage split at 0, the sweep's plot
        for n in (0, 1):
            for impl in ("reference", "torchvision", "detectron2", "mmdet"):
                record = load(f"data/w{n}/{impl}/run.json")
                assert record["status"] == "ok" and record["summary"]["num_workers"] == n, (
                    n,
                    impl,
                    record.get("reason"),
                )
                assert ("stages" in record["summary"]) == (n == 0), (n, impl)
        assert {"results/data.md", "results/plots-data/data-workers.png"} <= names
        # the same step of each implementation under torch.profiler (3 on the GPU), its trace beside its
        # run.json
        for impl in ("reference", "torchvision", "detectron2", "mmdet"):
            assert load(f"trace/{impl}/run.json")["summary"]["trace"]["steps"] == 1, impl
            assert f"results/trace/{impl}/trace-{impl}.json.gz" not in names  # in traces.tar
        assert "difference (ms per step)" in tar.extractfile("results/trace.md").read().decode()
        levers = tar.extractfile("results/levers.md").read().decode()
        assert "| baseline |" in levers and "| amp |" in levers and "| layout |" in levers
        phases = tar.extractfile("results/phases.md").read().decode()
        assert (
            "| host-device waits per step" in phases
            and "detectron2" in phases
            and "ms per iteration against" in phases
        )
        assert load("phases/detectron2/run.json")["summary"]["phases_ms"]["backward"] > 0
        kernels = tar.extractfile("results/kernels.md").read().decode()
        assert "| total |" in kernels and "torchvision" in kernels
    summary = (tmp_path / "summary.md").read_text()
    assert "| fp32 | reference | ok |" in summary and "| amp | detectron2 | failed |" in summary
    assert "| J/img | GPU W | GPU util | noisy |" in summary  # on a GPU machine: NVML's energy per image


def _wheel(folder: Path, name: str, version: str, requires: list[str], tag: str = "py3-none-any") -> None:
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)


def _closure(folder: Path, *args: str):
    project = folder / "pyproject.toml"
    project.write_text('[project]\nname = "x"\ndependencies = ["torch>=2.11", "pydantic>=2.5"]\n')
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "wheel_closure.py"),
            str(folder),
            "--project",
            str(project),
            *args,
        ],
        capture_output=True,
        text=True,
    )


def test_wheel_closure_names_what_the_gpu_machine_would_lack(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(
        wheels,
        "pydantic",
        "2.14.4",
        ["pydantic-core==2.50.5", "typing-extensions>=4", 'tomli; python_version < "3.11"'],
    )
    _wheel(wheels, "pydantic-core", "2.50.5", [], tag="cp312-cp312-manylinux_2_17_x86_64")
    ok = _closure(wheels)
    assert ok.returncode == 0 and "nothing missing for CPython 3.12" in ok.stdout, ok.stderr
    # a requirement neither carried nor on the machine, a wheel for another Python, a folder too large
    _wheel(wheels, "mmengine", "0.10.7", ["addict", "opencv-python>=3"])
    _wheel(wheels, "shapely", "2.2.0", [], tag="cp311-cp311-manylinux_2_17_x86_64")
    bad = _closure(wheels, "--max-mib", "0.0001")
    assert bad.returncode == 1
    assert "mmengine-0.10.7-py3-none-any.whl needs addict" in bad.stderr
    assert "opencv" not in bad.stderr  # the machines carry opencv-python-headless: the same cv2
    assert (
        "shapely-2.2.0-cp311-cp311-manylinux_2_17_x86_64.whl: built for ['cp311'], not CPython 3.12"
        in bad.stderr
    )
    assert "more than 0.0001 MiB" in bad.stderr


def test_tf32_is_set_alike_for_every_implementation():
    """benchmark.tf32 (default on) sets both of torch's switches, whose own defaults differ (matmuls
    off, cuDNN convolutions on); a worker on CUDA sets them before the framework starts."""
    import torch
    from mrcnn_bench.harness.config.schema import builtin_config_dir, load_config
    from mrcnn_bench.harness.run.worker import set_tf32

    assert load_config(builtin_config_dir() / "mask_rcnn_R_50_FPN_noaug_1x.yaml").benchmark.tf32 is True
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for on in (True, False):
            set_tf32(on)
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (on, on)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
