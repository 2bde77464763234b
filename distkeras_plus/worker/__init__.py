"""What a worker runs on a Spark executor: its context and the loops optimizer plugins build on."""

from distkeras_plus.worker.context import WorkerContext
from distkeras_plus.worker.loops import delta_loop, elastic_loop, local_loop, sync_loop, train_in_windows
from distkeras_plus.worker.partition import Batches, Spilled

__all__ = [
    "Batches",
    "Spilled",
    "WorkerContext",
    "delta_loop",
    "elastic_loop",
    "local_loop",
    "sync_loop",
    "train_in_windows",
]
