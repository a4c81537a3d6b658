"""Policy model: action heads (GR00T-style flow matching, OpenVLA-OFT-style L1) and backbone composition.

Pure torch: nothing here imports transformers or lerobot. Contracts: docs/ARCHITECTURE.md.
"""

from .flow_head import FlowHeadConfig, FlowMatchingHead
from .l1_head import L1ChunkHead, L1HeadConfig
from .model import HEADS, VLAModel, make_head, register_head

__all__ = [
    "HEADS",
    "FlowHeadConfig",
    "FlowMatchingHead",
    "L1ChunkHead",
    "L1HeadConfig",
    "VLAModel",
    "make_head",
    "register_head",
]
