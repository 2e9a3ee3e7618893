"""Stage 1 — torch-free views of a model: per-layer analyses, rank rules, rank allocation, snapshots.

Everything here works on shapes and plain arrays, so the dashboard draws its first page before torch loads.
"""
