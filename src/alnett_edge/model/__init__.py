"""ALNett model, registered variants, profiling and checkpoints."""

from alnett_edge.model.alnett import ALNett, ALNettConfig, ClusterLayer, config_of
from alnett_edge.model.checkpoint import load_checkpoint, model_from_card, new_card, read_card, save_checkpoint
from alnett_edge.model.profile import profile_model
from alnett_edge.model.registry import create_model, get_variant, list_variants

__all__ = [
    "ALNett",
    "ALNettConfig",
    "ClusterLayer",
    "config_of",
    "create_model",
    "get_variant",
    "list_variants",
    "load_checkpoint",
    "model_from_card",
    "new_card",
    "profile_model",
    "read_card",
    "save_checkpoint",
]
