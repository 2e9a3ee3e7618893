"""Stage 8 — models in and out: loading any source, the offline demo build, save / load of compressed models."""
