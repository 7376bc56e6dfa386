import json
import os

import pytest
from mrcnn_bench.harness.records import results as R


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "r" / "run.json"
    R.atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    class Boom:
        def __str__(self):
            raise RuntimeError("serialisation failed half-way")

    with pytest.raises(RuntimeError):
        R.atomic_write_json(path, {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file is intact
    assert os.listdir(path.parent) == ["run.json"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def _record(**over):
    rec = R.make_run_record(
        impl="x",
        run_id="r",
        status="ok",
        config={},
        world_size=1,
        device="cpu",
        dtype="fp32",
        window={"warmup": 1, "end": 3, "iters": 3},
        summary={
            "warmup": 1,
            "end": 3,
            "iterations": 2,
            "images": 4,
            "seconds": 4.0,
            "images_per_s": 1.0,
            "s_per_iter_median": 2.0,
        },
    )
    rec.update(over)
    return rec


def test_older_records_are_read_through_the_format_history(tmp_path):
    """A version-1 record (as the CPU baselines committed before 2026-12 were) is read as the current
    version, with what version 1 did not record made explicit, and says which version it was read from;
    the file is left as it was."""
    old = _record(
        schema_version=1, config={"name": "cpu_small", "benchmark": {"gpus": 1}}, environment={"cpu": "x"}
    )
    R.atomic_write_json(tmp_path / "run.json", old)
    before = (tmp_path / "run.json").read_text()
    record = R.load_run(tmp_path)
    assert record["schema_version"] == R.SCHEMA_VERSION == 3 and record["read_from_schema_version"] == 1
    assert record["config"]["benchmark"] == {"gpus": 1, "scaling": "strong", "tf32": None}
    assert record["measured_by"] == "harness"  # version 3: every record before it was timed by the harness
    assert record["environment"] == {
        "cpu": "x",
        "launcher": "torchrun",
        "nodes": None,
        "processes_per_node": None,
    }
    assert (tmp_path / "run.json").read_text() == before
    R.atomic_write_json(tmp_path / "new.json", _record())
    assert "read_from_schema_version" not in R.load_run(tmp_path / "new.json")


def test_load_run_checks_schema(tmp_path):
    p = tmp_path / "run.json"
    R.atomic_write_json(p, _record())
    assert R.load_run(tmp_path)["impl"] == "x"
    R.atomic_write_json(p, _record(schema_version=R.SCHEMA_VERSION + 1))
    with pytest.raises(R.ResultError, match="newer mrcnn-bench"):
        R.load_run(p)
    R.atomic_write_json(p, _record(schema_version=0))
    with pytest.raises(R.ResultError, match="re-run to regenerate"):
        R.load_run(p)
    R.atomic_write_json(p, {"hello": 1})
    with pytest.raises(R.ResultError, match="not an mrcnn-bench run record"):
        R.load_run(p)
    p.write_text('{"schema": ')
    with pytest.raises(R.ResultError, match="not valid JSON"):
        R.load_run(p)
    R.atomic_write_json(p, _record(summary=None))
    with pytest.raises(R.ResultError, match="'summary' is missing"):
        R.load_run(p)
    bad = _record()
    bad["summary"]["images_per_s"] = "fast"
    R.atomic_write_json(p, bad)
    with pytest.raises(R.ResultError, match=r"schema v3: key 'summary.images_per_s'"):
        R.load_run(p)
    R.atomic_write_json(p, _record(status="exploded"))
    with pytest.raises(R.ResultError, match=r"key 'status'"):
        R.load_run(p)


def test_environment_is_captured():
    env = R.capture_environment("cpu", threads=3)
    assert env["torch"].startswith("2.14.1") and env["torch_threads"] == 3
    assert len(env["load_average"]) == 3 and env["cpu_count"] >= 1 and env["cpu"]
