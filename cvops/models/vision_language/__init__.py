"""Vision-language models: CLIP (image and text towers in one embedding space), its BPE
tokenizer, zero-shot classification and the contrastive loss; BLIP (captioning and
image-text retrieval, Hugging Face names) with its ITC/ITM/LM losses."""

from .blip import BlipCaptioning, BlipRetrieval, blip_captioning_base, blip_retrieval_base
from .blip_config import BlipConfig
from .blip_losses import blip_losses
from .clip import (
    CLIP,
    CLIP_MEAN,
    CLIP_STD,
    CLIPConfig,
    CLIPVisionTransformer,
    build_clip,
    clip_rn50,
    clip_vit_b_16,
    clip_vit_b_32,
    clip_vit_l_14,
)
from .clip_checkpoint import clip_state_dict, load_clip
from .clip_loss import clip_contrastive_loss, gather_features
from .clip_resnet import ModifiedResNet
from .clip_text_clean import clean_text
from .clip_tokenizer import CLIPTokenizer, get_tokenizer
from .zero_shot import (
    DEFAULT_TEMPLATES,
    classify,
    preprocess,
    zero_shot_logits,
    zero_shot_weights,
)

__all__ = [
    "BlipCaptioning",
    "BlipConfig",
    "BlipRetrieval",
    "blip_captioning_base",
    "blip_losses",
    "blip_retrieval_base",
    "CLIP",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPConfig",
    "CLIPTokenizer",
    "CLIPVisionTransformer",
    "DEFAULT_TEMPLATES",
    "ModifiedResNet",
    "build_clip",
    "classify",
    "clean_text",
    "clip_contrastive_loss",
    "clip_state_dict",
    "clip_rn50",
    "clip_vit_b_16",
    "clip_vit_b_32",
    "clip_vit_l_14",
    "gather_features",
    "get_tokenizer",
    "load_clip",
    "preprocess",
    "zero_shot_logits",
    "zero_shot_weights",
]
