"""Stage 0 — where things live on disk: cache locations, content-keyed tensor files, atomic writes; and the
locks on objects that live in memory shared between threads (sharing)."""
