"""Training progress on the driver: rank 0 of the Ray Train loop sends a `Progress` (step, loss, episodes/s, ETA)
through a Ray queue after its first step, after its last one and in between about every `EVERY_S` seconds;
`following` drains the queue in a thread of the driver and logs each as one line on the `promptseg.progress`
logger (the CLI prints it; elsewhere it goes where logging is configured).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from statistics import fmean

from pydantic import BaseModel, ConfigDict
from ray.util.queue import Empty, Queue

PROGRESS = logging.getLogger("promptseg.progress")
QUEUE_KEY = "progress_queue"  # the loop config's entry for the queue (not a TrainConfig field)
EVERY_S = 10.0


class Progress(BaseModel):
    """Where a run stands: steps done, rank 0's mean loss since the previous report, the rate since the workers
    (re)started and the time left at that rate."""

    model_config = ConfigDict(frozen=True)

    step: int
    steps: int
    loss: float
    episodes_per_s: float
    eta_s: float

    def line(self) -> str:
        eta = f"{int(self.eta_s // 60)}:{round(self.eta_s % 60):02d}"
        return (
            f"train: step {self.step}/{self.steps}  loss {self.loss:.4f}  "
            f"{self.episodes_per_s:.1f} episodes/s  ETA {eta}"
        )


class ProgressTicker:
    """Rank 0's side: collects each step's loss and sends a `Progress` when one is due."""

    def __init__(
        self,
        queue: Queue,
        steps: int,
        episodes_per_step: int,
        first_step: int,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue, self.steps, self.episodes_per_step = queue, steps, episodes_per_step
        self.first_step, self.every_s, self.clock = first_step, every_s, clock
        self.started = self.last = clock()
        self.losses: list[float] = []

    def step_done(self, step: int, loss: float) -> None:
        """Record the loss of the `step`-th step (counted from 1)."""
        self.losses.append(loss)
        now = self.clock()
        if step not in (self.first_step + 1, self.steps) and now - self.last < self.every_s:
            return
        steps_per_s = (step - self.first_step) / max(now - self.started, 1e-9)
        progress = Progress(
            step=step,
            steps=self.steps,
            loss=fmean(self.losses),
            episodes_per_s=steps_per_s * self.episodes_per_step,
            eta_s=(self.steps - step) / steps_per_s,
        )
        self.queue.put_nowait(progress.model_dump())
        self.losses, self.last = [], now


@contextmanager
def following() -> Iterator[Queue]:
    """A queue for rank 0's progress, logged by a driver thread until the block ends (what is queued by then too)."""
    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()

    def drain() -> None:
        while True:
            try:
                item = queue.get(timeout=0.5)
            except Empty:
                if done.is_set():
                    return
                continue
            PROGRESS.info(Progress(**item).line())

    thread = threading.Thread(target=drain, name="training-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        done.set()
        thread.join(timeout=30)
        queue.shutdown()
