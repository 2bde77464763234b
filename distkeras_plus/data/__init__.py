"""Data: reading tables, built-in data sets, files on local and Hadoop-compatible paths."""
