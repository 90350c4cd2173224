"""BLIP base (Li et al., 2022): captioning and image-text retrieval models whose state_dicts
equal Hugging Face's ``BlipForConditionalGeneration`` and ``BlipForImageTextRetrieval``, so
their checkpoints load with ``strict=True``.

- :class:`BlipCaptioning`: ``vision_model`` (ViT) + ``text_decoder`` (causal BERT with
  cross-attention to the image tokens, LM head tied to the word embedding); teacher-forced
  logits, greedy/beam-search captions.
- :class:`BlipRetrieval`: ``vision_model`` + ``text_encoder`` (BERT, cross-attention used for
  image-text matching, skipped for the unimodal contrastive features) + ``vision_proj`` /
  ``text_proj`` (contrastive projections) + ``itm_head``.

Builders take a :class:`BlipConfig` and/or its fields as keywords
(``blip_captioning_base(vision_layers=2, text_layers=2, ...)``), so tests build small models.
"""

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .._registry import register_model
from .blip_config import BlipConfig
from .blip_generate import beam_search, greedy_search
from .blip_text import BlipTextLMHeadModel, BlipTextModel
from .blip_vision import BlipVisionModel


@torch.no_grad()
def init_blip_weights(model: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation (as Hugging Face's BLIP): linear and embedding weights normal with
    ``std``, biases zero, the padding embedding zero. PyTorch's default N(0, 1) embedding would
    make the tied LM head's first logits huge (an initial LM loss ~3x ln(vocab))."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.normal_(0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.zero_()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight[m.padding_idx].zero_()


def _config(config: Optional[BlipConfig], overrides: dict) -> BlipConfig:
    if config is None:
        return BlipConfig(**overrides)
    if not isinstance(config, BlipConfig):
        raise TypeError("config must be a BlipConfig, got %s" % type(config).__name__)
    return config.replace(**overrides) if overrides else config


class BlipCaptioning(nn.Module):
    """Image captioning: image tokens -> causal text decoder cross-attending to them."""

    def __init__(self, config: Optional[BlipConfig] = None, **overrides: Any):
        super().__init__()
        self.config = _config(config, overrides)
        self.vision_model = BlipVisionModel(self.config)
        self.text_decoder = BlipTextLMHeadModel(self.config)
        init_blip_weights(self)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """Image tokens ``[B, 1 + patches, Dv]`` (Hugging Face's ``image_embeds``)."""
        return self.vision_model(pixel_values)

    def decoder_logits(
        self, input_ids: Tensor, image_embeds: Tensor, attention_mask: Optional[Tensor] = None
    ) -> Tensor:
        """Teacher-forced logits ``[B, L, V]`` of ``input_ids`` (``[DEC]`` first)."""
        return self.text_decoder(input_ids, image_embeds, attention_mask)

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Optional[Tensor] = None
    ) -> Tensor:
        """Logits ``[B, L, V]``, as Hugging Face's ``BlipForConditionalGeneration(...).logits``
        (``input_ids`` used as given: put ``[DEC]`` first yourself, as its processor does not)."""
        return self.decoder_logits(input_ids, self.encode_image(pixel_values), attention_mask)

    def prompt_ids(
        self, batch: int, device: torch.device, tokenizer: Any = None, prompt: Optional[str] = None
    ) -> Tensor:
        """The decoder's start ``[B, P]``: ``[DEC]``, then the prompt's tokens if any (the
        tokenizer's ``[CLS] prompt [SEP]`` with ``[CLS]`` replaced by ``[DEC]`` and ``[SEP]``
        dropped, as Hugging Face's ``generate`` does)."""
        ids = [self.config.bos_token_id]
        if prompt:
            if tokenizer is None or not hasattr(tokenizer, "encode"):
                raise ValueError("prompt needs a tokenizer with an encode() method")
            encoded = list(tokenizer.encode(prompt))
            if len(encoded) < 2:
                raise ValueError(
                    "tokenizer.encode(prompt) gave %r: expected [CLS] ... [SEP]" % encoded
                )
            ids += encoded[1:-1]
        return torch.tensor([ids] * batch, dtype=torch.long, device=device)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        *,
        max_length: int = 20,
        min_length: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool = False,
        prompt_ids: Optional[Tensor] = None,
    ) -> Tensor:
        """Caption token ids ``[B, <= max_length]``, ``[DEC]`` (and prompt) first, ending at
        ``[SEP]`` and padded; greedy when ``num_beams == 1``. Defaults equal Hugging Face's
        ``generate`` defaults (BLIP's own demo used ``num_beams=3, max_length=20,
        min_length=5``)."""
        image_embeds = self.encode_image(pixel_values)
        if prompt_ids is None:
            prompt_ids = self.prompt_ids(len(image_embeds), image_embeds.device)
        cfg = self.config
        if num_beams > 1:
            image_embeds = image_embeds.repeat_interleave(num_beams, dim=0)

        next_logits = CachedDecoderStep(self.text_decoder, image_embeds, num_beams)

        common = dict(
            max_length=max_length,
            min_length=min_length,
            eos_id=cfg.sep_token_id,
            pad_id=cfg.pad_token_id,
        )
        if num_beams == 1:
            return greedy_search(next_logits, prompt_ids, **common)
        return beam_search(
            next_logits,
            prompt_ids,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            **common,
        )

    def decode(self, ids: Tensor, tokenizer: Any) -> List[str]:
        """Text of generated ``ids``: tokens after ``[DEC]`` up to the first ``[SEP]``."""
        if not hasattr(tokenizer, "decode"):
            raise TypeError(
                "tokenizer must have a decode() method, got %s" % type(tokenizer).__name__
            )
        cfg = self.config
        # BLIP's [DEC]/[ENC] are never caption text, even for a tokenizer that does not list
        # them as special tokens
        drop = {cfg.bos_token_id, cfg.enc_token_id, cfg.pad_token_id}
        texts = []
        for row in ids.tolist():
            row = row[1:]
            if cfg.sep_token_id in row:
                row = row[: row.index(cfg.sep_token_id)]
            row = [t for t in row if t not in drop]
            texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    @torch.no_grad()
    def caption(
        self, pixel_values: Tensor, tokenizer: Any, prompt: Optional[str] = None, **generate_kwargs
    ) -> List[str]:
        """Captions of ``pixel_values [B, 3, H, W]`` (normalised as the checkpoint expects)."""
        prompt_ids = self.prompt_ids(len(pixel_values), pixel_values.device, tokenizer, prompt)
        ids = self.generate(pixel_values, prompt_ids=prompt_ids, **generate_kwargs)
        return self.decode(ids, tokenizer)


class CachedDecoderStep:
    """``ids [N, L] -> next-token logits [N, V]`` for the search functions, with caches: the
    image's cross-attention keys/values are projected once (577 image tokens dominate a step),
    and each layer's self-attention keys/values of the earlier tokens are kept, so a step runs
    only the newest token.

    The searches hand over whole sequences (they stay free of model state); a row's cache is
    found by matching ``ids[:, :-1]`` with the previous call's rows of the same batch item
    (``group`` consecutive rows per item: beam search reorders beams, never items). Rows with
    equal prefixes and the same image have equal caches, so any match will do. When a row has
    no match (first call), the whole prefix is run."""

    def __init__(self, decoder: BlipTextLMHeadModel, image_embeds: Tensor, group: int):
        self.decoder = decoder
        self.image_kv = decoder.bert.image_key_values(image_embeds)
        self.group = group
        self.ids: Optional[Tensor] = None
        self.cache: Optional[List[Dict[str, Tensor]]] = None

    def parents(self, ids: Tensor) -> Optional[Tensor]:
        if self.ids is None or self.ids.shape != (ids.shape[0], ids.shape[1] - 1):
            return None
        same = (ids[:, None, :-1] == self.ids[None]).all(-1)  # [new row, previous row]
        item = torch.arange(len(ids), device=ids.device) // self.group
        same &= item[:, None] == item[None, :]
        if not bool(same.any(1).all()):
            return None
        return same.int().argmax(1)

    def __call__(self, ids: Tensor) -> Tensor:
        parents = self.parents(ids)
        if parents is None:
            cache: List[Dict[str, Tensor]] = [{} for _ in self.decoder.bert.encoder.layer]
            new = ids
        else:
            cache = [{"k": c["k"][parents], "v": c["v"][parents]} for c in self.cache]
            new = ids[:, -1:]
        logits = self.decoder(new, None, image_kv=self.image_kv, last_only=True, cache=cache)
        self.ids, self.cache = ids, cache
        return logits[:, -1]


class BlipRetrieval(nn.Module):
    """Image-text retrieval: contrastive features (unimodal encoders + projections) and the
    image-text matching head on the image-grounded text encoder."""

    def __init__(self, config: Optional[BlipConfig] = None, **overrides: Any):
        super().__init__()
        self.config = cfg = _config(config, overrides)
        self.vision_model = BlipVisionModel(cfg)
        self.text_encoder = BlipTextModel(cfg)
        self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        self.itm_head = nn.Linear(cfg.text_width, 2)
        init_blip_weights(self)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        return self.vision_model(pixel_values)

    def image_features(self, image_embeds: Tensor) -> Tensor:
        """L2-normalised contrastive image features ``[B, E]`` from the class token."""
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_features(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """L2-normalised contrastive text features ``[B, E]`` from the ``[CLS]`` token of the
        unimodal (no cross-attention) encoder."""
        hidden = self.text_encoder(input_ids, attention_mask)
        return F.normalize(self.text_proj(hidden[:, 0]), dim=-1)

    def itm_logits(
        self, input_ids: Tensor, image_embeds: Tensor, attention_mask: Optional[Tensor] = None
    ) -> Tensor:
        """Match / no-match logits ``[B, 2]`` (index 1 = match) of text i with image i."""
        # every image token is visible (HF passes an all-ones image mask: same result)
        hidden = self.text_encoder(input_ids, attention_mask, image_embeds)
        return self.itm_head(hidden[:, 0])

    def similarity(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Optional[Tensor] = None
    ) -> Tensor:
        """Cosine similarities ``[B_images, B_texts]`` of the contrastive features."""
        image_feat = self.image_features(self.encode_image(pixel_values))
        return image_feat @ self.text_features(input_ids, attention_mask).t()

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor,
        use_itm_head: bool = True,
        attention_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Hugging Face's ``itm_score``: ITM logits ``[B, 2]``, or with ``use_itm_head=False``
        the similarity matrix ``[B_images, B_texts]``."""
        if use_itm_head:
            return self.itm_logits(input_ids, self.encode_image(pixel_values), attention_mask)
        return self.similarity(pixel_values, input_ids, attention_mask)


@register_model
def blip_captioning_base(config: Optional[BlipConfig] = None, **overrides: Any) -> BlipCaptioning:
    """BLIP base captioning (ViT-B/16 at 384, BERT-base decoder); 223,971,644 parameters.
    Loads ``Salesforce/blip-image-captioning-base``'s state_dict with ``strict=True``."""
    return BlipCaptioning(config, **overrides)


@register_model
def blip_retrieval_base(config: Optional[BlipConfig] = None, **overrides: Any) -> BlipRetrieval:
    """BLIP base retrieval (ITC + ITM); 223,744,258 parameters. Loads
    ``Salesforce/blip-itm-base-coco``'s state_dict with ``strict=True``."""
    return BlipRetrieval(config, **overrides)


def shared_vision(models: Sequence[nn.Module]) -> None:
    """Make the given BLIP models use the first one's ``vision_model`` (BLIP pre-training
    shares one image encoder between ITC, ITM and LM)."""
    for m in models[1:]:
        m.vision_model = models[0].vision_model
