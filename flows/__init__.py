"""Prefect flows around the bioimage_cte library.

Flows here are thin: they find inputs, fan work out to tasks, and call library functions for
everything else. The library (``bioimage_cte``) never imports prefect; only this package does.

- :mod:`bioimage_cte_flows.zoo_ranking` (this folder installs as ``bioimage_cte_flows``): rank every model of a
  zoo on every target, incrementally, with a results store (``bioimage-cte zoo-rank --help``).
"""
