"""Rank 0's progress reports: after the first step, about every 10 s and after the last step, with the mean loss
since the previous report, episodes/s and the time left."""

from __future__ import annotations

import queue

from promptseg.training.progress import Progress, ProgressTicker


def test_reports_come_after_the_first_step_every_ten_seconds_and_after_the_last() -> None:
    sent: queue.Queue = queue.Queue()  # what the Ray queue receives: plain dicts
    now = [100.0]
    ticker = ProgressTicker(sent, steps=40, episodes_per_step=8, first_step=10, every_s=10.0, clock=lambda: now[0])
    for step in range(11, 41):
        now[0] += 1.0  # one step per second
        ticker.step_done(step, loss=float(step))
    reports = [Progress(**sent.get_nowait()) for _ in range(sent.qsize())]
    assert [report.step for report in reports] == [11, 21, 31, 40]
    first, second, *_, last = reports
    assert first.loss == 11.0 and second.loss == sum(range(12, 22)) / 10  # the mean since the previous report
    assert second.episodes_per_s == 8.0 and second.eta_s == 19.0  # 1 step/s, 8 episodes each; 19 steps left
    assert last.eta_s == 0.0
    assert second.line() == "train: step 21/40  loss 16.5000  8.0 episodes/s  ETA 0:19"
