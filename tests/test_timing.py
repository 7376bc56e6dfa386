import numpy as np
import pytest
from mrcnn_bench.harness.engine.timing import IterationRecord, IterationTimer, summarize_window


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _timed(durations, images=2):
    clock = FakeClock()
    synced = []
    timer = IterationTimer(
        len(durations), sync=lambda: synced.append(clock.t), clock=clock, memory=lambda: 1.0
    )
    timer.before_train()
    for d in durations:
        clock.t += d
        timer.after_step(images, loss=1.0, data_time=d / 10)
    return timer, synced


def test_window_arithmetic_uses_stamps_around_the_window():
    durations = [5.0, 3.0, 1.0, 2.0, 1.0, 4.0]
    timer, synced = _timed(durations)
    assert len(synced) == len(durations) + 1  # a device sync before every stamp
    s = timer.summary(warmup=2, end=5)
    # iterations 2, 3, 4: from the end of iteration 1 to the end of iteration 4
    assert s.seconds == pytest.approx(1.0 + 2.0 + 1.0)
    assert s.images == 6 and s.iterations == 3
    assert s.images_per_s == pytest.approx(6 / 4.0)
    assert s.s_per_iter_median == pytest.approx(1.0)
    assert s.s_per_iter_mean == pytest.approx(4.0 / 3)
    assert s.data_time_share == pytest.approx(0.1)
    w = [d for d in durations[2:5]]
    assert s.s_per_iter_p10 == pytest.approx(np.percentile(w, 10))
    assert s.s_per_iter_p90 == pytest.approx(np.percentile(w, 90))


def test_window_from_zero_starts_at_before_train():
    timer, _ = _timed([2.0, 2.0])
    s = timer.summary(warmup=0, end=2)
    assert s.seconds == pytest.approx(4.0) and s.images_per_s == pytest.approx(1.0)


def test_global_batch_counts_every_process():
    timer, _ = _timed([1.0] * 4, images=2)
    s = timer.summary(1, 4, world_images=[16, 16, 16, 16])
    assert s.images == 48 and s.images_per_s == pytest.approx(16.0)


def test_bad_windows_are_refused():
    timer, _ = _timed([1.0] * 3)
    with pytest.raises(ValueError, match="empty window"):
        timer.summary(2, 2)
    with pytest.raises(ValueError, match="needs 5 iterations, only 3"):
        timer.summary(1, 5)
    recs = [IterationRecord(iter=i, end_time=i + 1.0, duration=1.0, images=1) for i in (0, 2, 1)]
    with pytest.raises(ValueError, match="out of order"):
        summarize_window(recs, 0, 3)


def test_after_step_before_start_is_an_error_and_listeners_hear_each_event_in_order():
    """Listeners that complete a record (work counts, phases) come first, whatever order they came in;
    the others see the complete record, in the order they started listening; after_train reaches all."""
    from mrcnn_bench.harness.engine.timing import TimerListener

    events = []

    class Reader(TimerListener):
        def __init__(self, name):
            self.name = name

        def before_train(self):
            events.append((self.name, "before_train"))

        def after_step(self, record):
            events.append((self.name, record.iter, record.phases, record.rois))

        def after_train(self):
            events.append((self.name, "after_train"))

    class Completer(Reader):
        completes_record = True

        def after_step(self, record):
            record.phases = {"backbone": 1.0}
            super().after_step(record)

    t = IterationTimer(2, listeners=[Reader("progress")])
    t.listen(Reader("partial"))
    t.listen(Completer("phases"))
    with pytest.raises(RuntimeError, match="before_train"):
        t.after_step(1)
    t.before_train()
    t.count(rois=3)
    t.count(rois=4)  # a second micro-batch adds up
    rec = t.after_step(1, loss=0.5)
    assert rec.rois == 7 and rec.loss == 0.5 and rec.phases == {"backbone": 1.0}
    t.after_step(1)
    t.after_train()
    completed = {"backbone": 1.0}
    assert events == [
        ("phases", "before_train"),
        ("progress", "before_train"),
        ("partial", "before_train"),
        ("phases", 0, completed, 7),
        ("progress", 0, completed, 7),
        ("partial", 0, completed, 7),
        ("phases", 1, completed, None),
        ("progress", 1, completed, None),
        ("partial", 1, completed, None),
        ("phases", "after_train"),
        ("progress", "after_train"),
        ("partial", "after_train"),
    ]
    with pytest.raises(KeyError, match="unknown work counter 'boxes'"):
        t.count(boxes=1)


def test_a_loss_that_is_not_finite_stops_the_run_naming_iteration_and_parts():
    t = IterationTimer(5)
    t.before_train()
    t.after_step(2, loss=1.5)
    with pytest.raises(
        FloatingPointError, match=r"loss became nan at iteration 1: loss_mask=0\.7, loss_box_reg=inf"
    ):
        t.after_step(2, loss=float("nan"), loss_parts={"loss_mask": 0.7, "loss_box_reg": float("inf")})
    assert len(t.records) == 1  # the diverged step is not recorded as an iteration
    with pytest.raises(FloatingPointError, match=r"^loss became inf at iteration 1$"):
        t.after_step(2, loss=float("inf"))
    t.after_step(2)  # a framework that reports no loss is not checked
    assert len(t.records) == 2
