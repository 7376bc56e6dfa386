"""The records of runs: written, read, measured and compared.

- ``results``: run.json and iterations.jsonl, written atomically, with their schema
- ``metrics``: the measures of a training run, each declared once
- ``frames``: run records as a pandas frame, for every reader
- ``statistics``: the bootstrap intervals and the tests the readers use
- ``logs``, ``ingest``: other systems' training logs as run records (``mrcnn-bench ingest``)
- ``mlperf``: MLPerf result logs, read and written with mlperf-logging
"""

__all__ = ["frames", "ingest", "logs", "metrics", "mlperf", "results", "statistics"]
