"""The built-in distributed optimizers of distkeras-plus (one plugin module each)."""
