"""Foundations every stage uses: the error classes, lazy imports, safe file writes and the version.

Nothing here imports another part of bioimage-cte.
"""
