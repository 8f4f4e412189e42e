"""CLIP: a vision tower (ViT or ModifiedResNet) and a text tower trained with a contrastive loss."""

from clipray.models.clip.model import CLIP, build_clip
from clipray.models.clip.state_dict_adapter import from_openai_state_dict, infer_config

__all__ = ["CLIP", "build_clip", "from_openai_state_dict", "infer_config"]
