"""A task for the harness's own tests, registered through MRCNN_BENCH_TASKS: the whole task in one file.

``warm``: times the adapter's translation of the config, ``benchmark.iters`` times, one process; its
report section is a table of translations per second.
"""

import time

from mrcnn_bench.harness.tasks import Task, TaskError, one_process
from mrcnn_bench.harness.tasks.rank import native_dict, say, write_record


class Warm(Task):
    name = "warm"
    help = "warm: translations per second (a test fixture)"
    trains = False
    readme_section = "warm"
    section_title = "Warm (translations per second)"

    def check(self, cfg, data_summary):
        one_process(cfg)
        if cfg.benchmark.iters > 1000:
            raise TaskError(
                f"--task warm: benchmark.iters={cfg.benchmark.iters} is more than 1000 translations"
            )

    def work(self, bench):
        return f"{bench.iters} translations"

    def run(self, rank):
        from mrcnn_bench.harness.records.results import atomic_write_jsonl

        rows = []
        for i in range(rank.cfg.benchmark.iters):
            start = time.perf_counter()
            rank.adapter.translate(rank.cfg, rank.data)
            rows.append(
                {"iter": i, "duration": time.perf_counter() - start, "images": 0}
            )  # the rows every iteration has
        atomic_write_jsonl(rank.run_dir / "iterations.jsonl", rows)
        per_s = len(rows) / sum(r["duration"] for r in rows)
        write_record(
            rank,
            dict(
                native_config=native_dict(rank.native, {}),
                summary={"translations_per_s": per_s},
                iterations_recorded=len(rows),
                window={"warmup": 0, "end": len(rows), "iters": len(rows)},
                measures="translations of the config per second",
            ),
        )
        say(f"{rank.impl}: {per_s:.0f} translations/s")

    def section(self, df):
        import pandas as pd

        runs = df[(df["task"] == self.name) & (df["status"] == "ok")]
        return (
            pd.DataFrame(
                {
                    "Implementation": runs["impl"],
                    "translations/s": [f"{s['translations_per_s']:.0f}" for s in runs["summary"]],
                }
            )
            if len(runs)
            else None
        )


TASKS = [Warm()]
