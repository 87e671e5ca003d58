"""Evaluation of a served model over HTTP: suites, metrics, judge, comparison (docs/evaluation.md).

A client of the public API only: it imports nothing from the server but the asset and dataset
pulling used to load its suites and packaged scorers.
"""
