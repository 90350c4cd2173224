"""The sizes of a BLIP model (:class:`BlipConfig`), shared by the captioning and retrieval models.

Defaults are BLIP base as Salesforce released it on the Hugging Face hub: ViT-B/16 at 384 and
a BERT-base text transformer (12 layers, 12 heads, width 768) over BERT's vocabulary plus
BLIP's two added tokens ``[DEC]`` (30522, the decoder's start token) and ``[ENC]`` (30523,
the image-grounded encoder's first token).
"""

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class BlipConfig:
    # image encoder (ViT)
    image_size: int = 384
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    # Hugging Face's port uses LayerNorm eps 1e-5 in the ViT (the original code used 1e-6);
    # we follow the checkpoints people load, i.e. Hugging Face's.
    vision_eps: float = 1e-5
    vision_attention_dropout: float = 0.0
    # text transformer (BERT with cross-attention to the image in every layer)
    vocab_size: int = 30524
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12  # BERT-base; Hugging Face's BlipTextConfig() default says 8
    text_mlp: int = 3072
    max_position_embeddings: int = 512
    text_eps: float = 1e-12
    text_dropout: float = 0.0
    text_attention_dropout: float = 0.0
    # image-text contrastive projection size (Hugging Face's ``image_text_hidden_size``)
    embed_dim: int = 256
    # special tokens
    pad_token_id: int = 0
    bos_token_id: int = 30522  # [DEC]: first token of the captioning decoder
    sep_token_id: int = 102  # [SEP]: ends a caption (what generation stops on)
    enc_token_id: int = 30523  # [ENC]: first token of the image-grounded (ITM) encoder

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "patch_size",
            "vision_width",
            "vision_layers",
            "vision_heads",
            "vision_mlp",
            "vocab_size",
            "text_width",
            "text_layers",
            "text_heads",
            "text_mlp",
            "max_position_embeddings",
            "embed_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError("BlipConfig.%s must be a positive int, got %r" % (name, value))
        if self.image_size % self.patch_size:
            raise ValueError(
                "BlipConfig.image_size %d is not a multiple of patch_size %d"
                % (self.image_size, self.patch_size)
            )
        if self.vision_width % self.vision_heads:
            raise ValueError(
                "BlipConfig.vision_width %d is not divisible by vision_heads %d"
                % (self.vision_width, self.vision_heads)
            )
        if self.text_width % self.text_heads:
            raise ValueError(
                "BlipConfig.text_width %d is not divisible by text_heads %d"
                % (self.text_width, self.text_heads)
            )
        for name in ("pad_token_id", "bos_token_id", "sep_token_id", "enc_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(
                    "BlipConfig.%s = %d is outside the vocabulary [0, %d)"
                    % (name, value, self.vocab_size)
                )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def replace(self, **changes: Any) -> "BlipConfig":
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf_config: Any) -> "BlipConfig":
        """The sizes of a Hugging Face ``BlipConfig`` (read by attribute name; transformers
        itself is not imported). The ``[ENC]`` id is not in Hugging Face's config: it is taken
        as ``bos_token_id + 1``, as in BLIP's tokenizer."""
        v, t = hf_config.vision_config, hf_config.text_config
        image_size, patch_size = v.image_size, v.patch_size
        if not isinstance(image_size, int) or not isinstance(patch_size, int):
            raise ValueError("from_hf: only square image_size / patch_size ints are supported")
        return cls(
            image_size=image_size,
            patch_size=patch_size,
            vision_width=v.hidden_size,
            vision_layers=v.num_hidden_layers,
            vision_heads=v.num_attention_heads,
            vision_mlp=v.intermediate_size,
            vision_eps=v.layer_norm_eps,
            vision_attention_dropout=float(v.attention_dropout),
            vocab_size=t.vocab_size,
            text_width=t.hidden_size,
            text_layers=t.num_hidden_layers,
            text_heads=t.num_attention_heads,
            text_mlp=t.intermediate_size,
            max_position_embeddings=t.max_position_embeddings,
            text_eps=t.layer_norm_eps,
            text_dropout=float(t.hidden_dropout_prob),
            text_attention_dropout=float(t.attention_probs_dropout_prob),
            embed_dim=hf_config.image_text_hidden_size,
            pad_token_id=t.pad_token_id,
            bos_token_id=t.bos_token_id,
            sep_token_id=t.sep_token_id,
            enc_token_id=min(t.bos_token_id + 1, t.vocab_size - 1),
        )
