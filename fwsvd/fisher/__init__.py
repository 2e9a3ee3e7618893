"""Stage 6 — task statistics: exact per-example Fisher (and the batch shortcut), cached and data-parallel."""
