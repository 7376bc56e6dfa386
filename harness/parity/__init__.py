"""Whether the implementations do the same work: the comparisons behind ``mrcnn-bench parity``.

- ``compare``: the static table of effective hyperparameters against the canonical values, the forward
  check's and the run's comparisons (pandas frames)
- ``step_check``: one training step of each implementation against the reference's, term by term
- ``probe``: questions asked of an implementation in its own interpreter
  (``python -m mrcnn_bench.harness.parity.probe``)
"""

__all__ = ["compare", "probe", "step_check"]
