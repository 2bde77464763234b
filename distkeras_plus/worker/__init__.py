"""What a worker runs on a Spark executor: its context and the loops optimizer plugins build on."""

from distkeras_plus.worker.context import Batches, WorkerContext
from distkeras_plus.worker.loops import delta_loop, elastic_loop, local_loop, sync_loop, train_in_windows

__all__ = [
    "Batches",
    "WorkerContext",
    "delta_loop",
    "elastic_loop",
    "local_loop",
    "sync_loop",
    "train_in_windows",
]
