"""Stage 6 — task statistics: exact per-example Fisher (and the batch shortcut) and, from the same pass, the
token statistics asvd, whiten and kfac need; cached and data-parallel."""
