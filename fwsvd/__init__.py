"""fwsvd: Fisher-weighted SVD compression of fine-tuned transformer language models."""

from fwsvd.targets import dense_weight, find_blocks, find_targets

__all__ = ["dense_weight", "find_blocks", "find_targets"]
