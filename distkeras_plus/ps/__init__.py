"""The parameter server from Python: secrets, weights laid flat, checkpoints of the centre."""
