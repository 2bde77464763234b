"""Benchmarks of distkeras-plus, each measured against its baseline in the same run (`dk bench`)."""
