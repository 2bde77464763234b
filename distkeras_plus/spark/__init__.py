"""Spark: the session, the driver's side of a run, the executors' entry, predictions."""
