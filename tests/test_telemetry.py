"""What the machine did during the window (harness/machine/telemetry.py), its state before the run
(harness/machine/doctor.py),
and the gate's refusal of noisy runs; on the CPU, with a stand-in NVML (tests/fake_nvml) and the real
psutil."""

import json
import time

import pytest
from conftest import ROOT, run_cli
from mrcnn_bench.harness.machine.telemetry import noise, window_bounds, window_telemetry

FAKE = ROOT / "tests" / "fake_nvml"


def _sample(t, energy_mj, busy, own, throttle=0, pids=()):
    return {
        "t": t,
        "cpu_util": [50.0, 100.0],
        "cpu_mhz": [2000.0, 2200.0],
        "load1": 1.0,
        "busy_cpu_s": busy,
        "own_cpu_s": own,
        "gpus": [
            {
                "index": 0,
                "util": 80,
                "memory_util": 30,
                "sm_mhz": 1900,
                "memory_mhz": 2600,
                "power_w": 250.0,
                "energy_mj": energy_mj,
                "temperature_c": 70,
                "throttle": throttle,
                "memory_used_mb": 1000.0,
                "other_processes": list(pids),
            }
        ],
    }


def test_the_window_is_cut_out_of_the_samples_with_its_counters_interpolated_at_its_ends():
    # samples every second from t=100: energy grows 250 J/s, the machine is busy 2 CPU-s/s of which the run's
    # 1.5
    rows = [
        _sample(
            100.0 + k,
            250_000.0 * k,
            2.0 * k,
            1.5 * k,
            throttle=0x40 if k == 3 else 0x1,
            pids=[7] if k >= 4 else [],
        )
        for k in range(8)
    ]
    t = window_telemetry(rows, 101.5, 105.5, images=20, cores=2, price_per_hour=3.6)
    assert t["seconds"] == 4.0 and t["samples"] == 4  # t = 102, 103, 104, 105
    assert t["gpu_energy_j"] == pytest.approx(1000.0)  # 250 W x 4 s, read between the samples around each end
    assert t["j_per_image"] == pytest.approx(50.0) and t["images_per_s_per_w"] == pytest.approx(0.02)
    assert t["energy_parts"] == ["gpu"] and "cpu_energy_j" not in t
    assert t["others_cpu_share"] == pytest.approx(
        0.25
    )  # (8 - 6) busy CPU-s not the run's, over 2 cores x 4 s
    assert (
        t["gpu_util_mean"] == 80
        and t["sm_mhz_p90"] == 1900
        and t["cpu_util_mean"] == 75.0
        and t["cpu_mhz_mean"] == 2100.0
    )
    assert t["throttle_share"] == 0.25 and t["throttle_reasons"] == [
        "hw_thermal"
    ]  # GPU idle (0x1) is no throttle
    assert t["other_gpu_process_share"] == 0.5 and t["other_gpu_processes"] == [7]
    assert t["usd_per_1000_images"] == pytest.approx(3.6 / 3600 * 4 / 20 * 1000)
    causes = noise(t)
    assert (
        len(causes) == 3
        and "25% of the machine's CPU" in causes[0]
        and "hw_thermal" in causes[1]
        and "pid 7" in causes[2]
    )
    quiet = window_telemetry(
        [_sample(100.0 + k, 0.0, 1.0 * k, 1.0 * k) for k in range(5)], 100.5, 103.5, 8, 2
    )
    assert noise(quiet) == [] and quiet["others_cpu_share"] == 0.0
    # a window between two samples (a data run's milliseconds) is read off samples outside it: no verdict
    busy_outside = [_sample(100.0, 0.0, 0.0, 0.0), _sample(101.0, 0.0, 2.0, 0.0)]
    assert "others_cpu_share" not in window_telemetry(busy_outside, 100.4, 100.41, 2, 2)
    # a window the samples do not cover has no energy, not a wrong one
    assert "gpu_energy_j" not in window_telemetry(rows, 90.0, 105.0, 20, 2)
    stamps = [{"iter": i, "duration": 1.0, "wall_time": 50.0 + i} for i in range(6)]
    assert window_bounds(stamps, 2, 5) == (51.0, 54.0) and window_bounds(stamps, 0, 6) == (49.0, 55.0)


def _fake(tmp_path, **gpu):
    spec = {
        "driver": "580.65.06",
        "cuda": 13000,
        "t0": time.time() - 1000,
        "gpus": [
            {
                "power_w": 300,
                "util": 90,
                "memory_util": 40,
                "sm_mhz": 1980,
                "memory_mhz": 2619,
                "temperature_c": 60,
                "throttle": 0,
                "memory_used": 2e9,
                "pids": [],
                "persistence": 1,
                "ecc": [1, 1],
                "mig": [0, 0],
                "app_clock": 1755,
                "default_app_clock": 1755,
                **gpu,
            }
        ],
    }
    path = tmp_path / "nvml.json"
    path.write_text(json.dumps(spec))
    return {"PYTHONPATH": str(FAKE), "FAKE_NVML": str(path)}


SHORT = (
    "--config",
    "cpu_small",
    "--threads",
    "2",
    "--set",
    "benchmark.iters=6",
    "--set",
    "benchmark.warmup=2",
    "--set",
    "benchmark.window_end=6",
    "--set",
    "benchmark.telemetry_period_s=0.05",
)


@pytest.mark.e2e
def test_a_run_samples_the_gpu_and_the_cpu_and_gives_energy_per_image(tmp_path):
    env = _fake(tmp_path)
    out = run_cli(
        "run",
        "--impl",
        "reference",
        *SHORT,
        "--set",
        "benchmark.telemetry_gpu=on",
        "--price-per-hour",
        "2.5",
        "--out",
        tmp_path,
        "--run-id",
        "q",
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "q" / "reference" / "run.json").read_text())
    s, t = record["summary"], record["summary"]["telemetry"]
    rows = [
        json.loads(line)
        for line in (tmp_path / "q" / "reference" / "telemetry.jsonl").read_text().splitlines()
    ]
    assert rows and all(len(r["gpus"]) == 1 and len(r["cpu_util"]) >= 1 for r in rows)
    assert t["samples"] >= 3 and t["seconds"] == pytest.approx(s["seconds"], rel=1e-2)
    # 300 W through the window: the fake's counter, independent of the sampler's arithmetic
    assert t["gpu_energy_j"] == pytest.approx(300 * s["seconds"], rel=1e-2)
    assert t["j_per_image"] == pytest.approx(300 * s["seconds"] / s["images"], rel=1e-2)
    assert t["images_per_s_per_w"] == pytest.approx(s["images_per_s"] / 300, rel=1e-2)
    assert t["gpu_util_mean"] == 90 and t["sm_mhz_mean"] == 1980 and t["gpu_power_w_mean"] == 300
    assert t["usd_per_1000_images"] == pytest.approx(2.5 / 3600 * s["seconds"] / s["images"] * 1000, rel=1e-2)
    assert t["throttle_share"] == 0 and t["other_gpu_process_share"] == 0
    assert 0 <= t["cpu_util_mean"] <= 100 and t["load1_max"] > 0
    checks = {f["check"]: f for f in record["machine_state"]["findings"]}
    assert checks["GPU 0 processes"]["level"] == "ok" and checks["NVIDIA driver"]["value"] == "580.65.06"
    assert checks["CUDA (driver)"]["value"] == "13.0"
    report = run_cli("report", tmp_path / "q", "--plots", tmp_path / "plots", env=env)
    assert report.returncode == 0, report.stderr
    assert "### What the machine did during the window" in report.stdout and "| J/img" in report.stdout
    assert (tmp_path / "plots" / "telemetry.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
def test_a_throttled_gpu_shared_with_another_process_makes_a_noisy_run_that_the_gate_refuses(tmp_path):
    env = _fake(tmp_path, throttle=0x40 | 0x4, pids=[999999], persistence=0, mig=[1, 1], app_clock=1410)
    doctor = run_cli("doctor", "--device", "cuda", "--format", "json", env=env)
    assert doctor.returncode == 0, doctor.stderr
    levels = {f["check"]: (f["level"], f["value"]) for f in json.loads(doctor.stdout)["findings"]}
    assert levels["GPU 0 processes"] == ("bad", "999999") and levels["GPU 0 throttle"] == (
        "bad",
        "sw_power_cap, hw_thermal",
    )
    assert levels["GPU 0 persistence mode"] == ("warning", "off") and levels["GPU 0 MIG"] == ("warning", "on")
    assert levels["GPU 0 application clock (SM)"] == ("warning", "1410 MHz (default 1755)")
    out = run_cli(
        "run",
        "--impl",
        "reference",
        *SHORT,
        "--set",
        "benchmark.telemetry_gpu=on",
        "--out",
        tmp_path,
        "--run-id",
        "n",
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "n" / "reference" / "run.json").read_text())
    assert any("GPU throttled (hw_thermal, sw_power_cap) in 100%" in c for c in record["noisy"]), record[
        "noisy"
    ]
    assert any("another process on the GPU (pid 999999) in 100%" in c for c in record["noisy"]), record[
        "noisy"
    ]
    assert "- **noisy**: reference (n): " in out.stdout
    gate = run_cli(
        "regress", "--baseline", tmp_path / "n", "--candidate", tmp_path / "n", "--threshold", "50%"
    )
    assert gate.returncode == 2 and "noisy: " in gate.stderr and "--allow-noisy" in gate.stderr, gate.stderr
    assert str(tmp_path / "n" / "reference" / "run.json") in gate.stderr
    allowed = run_cli(
        "regress",
        "--baseline",
        tmp_path / "n",
        "--candidate",
        tmp_path / "n",
        "--threshold",
        "50%",
        "--allow-noisy",
    )
    assert allowed.returncode == 0 and "noisy" in allowed.stderr, allowed.stderr


@pytest.mark.e2e
def test_what_cannot_be_measured_is_said_and_the_run_goes_on(tmp_path):
    # no NVML here (the real bindings find no driver), a period out of range, a negative price
    out = run_cli(
        "run",
        "--impl",
        "reference",
        *SHORT,
        "--set",
        "benchmark.telemetry_gpu=on",
        "--set",
        "benchmark.price_per_hour=-1",
        "--out",
        tmp_path,
        "--run-id",
        "m",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((tmp_path / "m" / "reference" / "run.json").read_text())["summary"]
    assert s["telemetry_missing"]["gpu"].startswith("NVML: ") and "negative" in s["telemetry_missing"]["cost"]
    assert "usd_per_1000_images" not in s["telemetry"] and "gpu_util_mean" not in s["telemetry"]
    assert "price_per_hour -1.0: a price cannot be negative" in out.stderr
    slow = run_cli(
        "run",
        "--impl",
        "reference",
        *SHORT,
        "--set",
        "benchmark.telemetry_period_s=20",
        "--out",
        tmp_path,
        "--run-id",
        "p",
    )
    assert slow.returncode == 0, slow.stderr[-3000:]
    record = json.loads((tmp_path / "p" / "reference" / "run.json").read_text())
    assert (
        "telemetry" not in record["summary"]
        and not (tmp_path / "p" / "reference" / "telemetry.jsonl").exists()
    )
    assert (
        "telemetry_period_s 20.0: expected 0.01 to 10.0 s"
        in record["summary"]["telemetry_missing"]["telemetry"]
    )
    assert record["machine_state"]["findings"] and record["noisy"] is not None
