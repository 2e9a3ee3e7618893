"""Stage 0 — where things live on disk: cache locations, content-keyed tensor files, atomic writes."""
