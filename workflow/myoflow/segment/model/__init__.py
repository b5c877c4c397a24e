"""Segmentation networks: pure ``nn.Module``s, built from a config by an explicit registry.

Nothing here reads or writes files; loading weights and running inference live with the
stage that uses them, and take a built model so one model serves many participants.
"""

from myoflow.segment.model.registry import ARCHITECTURES, ModelConfigError, build_model
from myoflow.segment.model.vnet import VNet

__all__ = ["ARCHITECTURES", "ModelConfigError", "VNet", "build_model"]
