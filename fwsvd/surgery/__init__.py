"""Stage 5 — model surgery: which layers are targets, the low-rank module, and the one place modules are swapped."""
