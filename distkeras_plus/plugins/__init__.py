"""Optimizer plugins: what an optimizer is (`spec`), the hooks (`hookspecs`), the registry."""
