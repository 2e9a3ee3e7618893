"""Stage 7 — what a compression costs the task: metrics, method comparisons, sweeps, fine-tuning."""
