"""Implementations for the harness's own tests, registered through MRCNN_BENCH_EXTRA_ADAPTERS.

``busy`` and ``busy_peer`` do ten units of work each iteration; a unit is a small matmul (real work
through torch, ~0.2 ms) and a 1 ms sleep. The sleep makes the iteration's length a property of the
work asked for rather than of how busy the shared machine is that second: the relative-speed tests
need ratios accurate to a few percent between runs taken seconds apart, which pure compute on a
machine whose speed drifts ±20% over seconds does not give. Environment variables shape them:
    MRCNN_TEST_SLOWDOWN=1.2     20% more work per iteration ("busy" only: a planted regression)
    MRCNN_TEST_MACHINE=1.3      30% more work for both (a slower machine)
    MRCNN_TEST_FAULT=[NAME:]KIND@N   at iteration N (of adapter NAME, default every one): crash (an
                                exception), hang (sleeps forever), oom (a real allocation failure
                                under a memory limit), kill (SIGKILL, as the kernel's OOM killer)
    MRCNN_TEST_UNAVAILABLE=NAME  that adapter says it is not installed
"""

import os
import signal
import time

from mrcnn_bench.adapters.base import Adapter


class Busy(Adapter):
    install_hint = "pip install mrcnn-bench-test-fixture (not a real package)"

    def __init__(self, name, slowed):
        self.name, self.slowed = name, slowed

    def available(self):
        if os.environ.get("MRCNN_TEST_UNAVAILABLE") == self.name:
            return False, f"{self.name} is not installed (a test fixture)"
        return True, "test"

    def translate(self, cfg, data=None):
        return {"iters": cfg.benchmark.iters, "batch": cfg.ims_per_process_step}

    def effective_hparams(self, native):
        return {"solver.ims_per_batch_per_process": native["batch"], "_notes": {}}

    def _fault(self, it):
        spec = os.environ.get("MRCNN_TEST_FAULT")
        if not spec:
            return
        if ":" in spec:
            name, _, spec = spec.partition(":")
            if name != self.name:
                return
        kind, _, at = spec.partition("@")
        if it != int(at or 0):
            return
        if kind == "crash":
            raise RuntimeError(f"planted crash at iteration {it}")
        if kind == "hang":
            time.sleep(10_000)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "oom":
            import resource

            import torch

            resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, resource.RLIM_INFINITY))
            torch.empty(8 * 2**30, dtype=torch.uint8).fill_(1)

    def train(self, cfg, data, timer, dist, native=None):
        import torch

        reps = 10 * float(os.environ.get("MRCNN_TEST_MACHINE", "1"))
        if self.slowed:
            reps *= float(os.environ.get("MRCNN_TEST_SLOWDOWN", "1"))
        reps = round(reps)  # 10 units an iteration; x1.2 = 12
        a = torch.randn(192, 192) / 192**0.5
        timer.before_train()
        for it in range(cfg.benchmark.iters):
            self._fault(it)
            for _ in range(reps):
                a = torch.tanh(a @ a) + 0.01
                time.sleep(1e-3)
            timer.after_step(cfg.ims_per_process_step, loss=float(a.mean()))
        return {}


ADAPTERS = [Busy("busy", slowed=True), Busy("busy_peer", slowed=False)]
