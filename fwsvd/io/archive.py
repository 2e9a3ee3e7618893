"""A compressed copy of a model as a zip archive of the directory save_compressed writes (for downloads)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fwsvd.config import CompressionConfig
from fwsvd.factorize.store import DecompositionStore
from fwsvd.surgery.compress import compressed_copy
from fwsvd.surgery.inputs import Statistics


def compressed_archive(model: nn.Module, config: CompressionConfig, *, fisher: Mapping[str, torch.Tensor] | None,
                       tokenizer: Any = None, fisher_provenance: dict[str, Any] | None = None,
                       extra: dict[str, Any] | None = None, store: DecompositionStore | None = None,
                       statistics: Statistics | None = None) -> bytes:
    """A zip of the folder :func:`fwsvd.io.persistence.save_compressed` writes for a copy of ``model``
    compressed by ``config`` (``model/`` inside the archive; reload with ``load_compressed``). The model is
    not modified. ``fisher`` and ``statistics`` as for ``compressed_copy``: a FisherResult as ``fisher`` also
    brings the token statistics asvd, whiten and kfac need."""
    import io
    import tempfile
    import zipfile

    from fwsvd.io.persistence import save_compressed

    compressed, report = compressed_copy(model, config, fisher=fisher, statistics=statistics, store=store)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as scratch:
        directory = save_compressed(compressed, Path(scratch) / "model", config=report.config, tokenizer=tokenizer,
                                    fisher_provenance=fisher_provenance, extra=extra)
        # Stored, not deflated: float weights barely compress and deflating them costs seconds.
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for file in sorted(directory.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(directory.parent))
    return buffer.getvalue()
