"""Baselines that our figures are compared with. Never imported by the package itself."""
