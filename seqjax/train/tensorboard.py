"""Scalar curves as TensorBoard event files, written with tensorboard's own writer (no TensorFlow)."""

from __future__ import annotations

import os
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class ScalarWriter:
    """Writes scalars under `logdir`. On resume, `start(step)` marks a restart so TensorBoard drops
    points an interrupted run wrote after the checkpoint it resumed from (SessionLog.START purge)."""

    def __init__(self, logdir: str | os.PathLike):
        self._writer = EventFileWriter(str(logdir), max_queue_size=100, flush_secs=10)

    def start(self, step: int) -> None:
        self._writer.add_event(event_pb2.Event(
            wall_time=time.time(), step=step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                             for k, v in values.items()])
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
