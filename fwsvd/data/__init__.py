"""Stage 3 — task data: GLUE / CoNLL / local files / the offline demo corpus, tokenised batches."""
