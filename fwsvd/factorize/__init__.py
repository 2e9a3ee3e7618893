"""Stage 4 — the closed forms: one decomposition per layer and method, truncated for any rank, and kept."""
