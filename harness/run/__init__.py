"""Orchestration, in the user's command and the ranks it starts: a request becomes launched process
groups and their records.

- ``suite``: a request (RunRequest) to its runs: the config scaled to the processes, which implementations
  can run, the data, the shared initial weights, resume, rounds; every check of a command's options
- ``launch``: one process group per implementation (torchrun or srun), its time limit, the verdict of a
  run that did not finish
- ``worker``: one rank (``python -m mrcnn_bench.harness.run.worker``): threads, process group, adapter,
  the task's body
- ``checks``: what ``mrcnn-bench parity`` runs and reports, in its four modes
- ``folder``: one run folder per run id, its lock and what a resumed run must match
- ``scaling``: a config's batch over N processes (strong or weak scaling)
- ``init_weights``, ``shared_training``: the run's shared initial weights, and the short shared training
  before an inference run
"""

__all__ = ["checks", "folder", "init_weights", "launch", "scaling", "shared_training", "suite", "worker"]
