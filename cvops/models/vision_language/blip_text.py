"""BLIP's text transformer: BERT (post-norm) with a cross-attention to the image tokens in
every layer, and the language-model head of the captioning decoder. Names follow Hugging
Face's ``BlipTextModel`` / ``BlipTextLMHeadModel`` (``embeddings.{word_embeddings,
position_embeddings, LayerNorm}``, ``encoder.layer.i.{attention, crossattention}.{self.{query,
key, value}, output.{dense, LayerNorm}}``, ``intermediate.dense``, ``output.{dense, LayerNorm}``,
``cls.predictions.{transform.{dense, LayerNorm}, decoder, bias}``).

One module serves the three BLIP text roles:

- unimodal encoder (ITC): bidirectional self-attention, the cross-attention skipped
  (``image_embeds=None``);
- image-grounded encoder (ITM): bidirectional, cross-attending to the image;
- image-grounded decoder (captioning): causal self-attention, cross-attending to the image.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .blip_config import BlipConfig


def padding_bias(mask: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``[B, L]`` keep-mask (1 = attend, 0 = padding) -> additive bias ``[B, 1, 1, L]``.

    Masked keys get the dtype's most negative value rather than ``-inf`` so a row with every
    key masked gives a uniform softmax instead of NaN (as Hugging Face's eager path does)."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ValueError("attention_mask must be [B, L], got shape %s" % (tuple(mask.shape),))
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias = bias.masked_fill(mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def causal_bias(
    length: int,
    padding: Optional[Tensor],
    dtype: torch.dtype,
    device: torch.device,
    past: int = 0,
) -> Tensor:
    """Additive bias ``[B or 1, 1, L, past + L]``: query ``i`` (position ``past + i``) sees
    keys ``<= past + i`` that are not padding."""
    future = torch.ones(length, past + length, dtype=torch.bool, device=device).triu(past + 1)
    bias = torch.zeros(length, past + length, dtype=dtype, device=device)
    bias = bias.masked_fill(future, torch.finfo(dtype).min)[None, None]
    if padding is not None:
        # clamp: adding two "most negative" values would overflow to -inf
        bias = (bias + padding).clamp(min=torch.finfo(dtype).min)
    return bias


class BlipTextEmbeddings(nn.Module):
    """Word + learned position embeddings, LayerNorm, dropout (BERT without token types)."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        d = config.text_width
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.text_eps)
        self.dropout = nn.Dropout(config.text_dropout)
        # non-persistent, as in Hugging Face: not part of the state_dict
        positions = torch.arange(config.max_position_embeddings).expand(1, -1)
        self.register_buffer("position_ids", positions, persistent=False)

    def forward(self, input_ids: Tensor, past: int = 0) -> Tensor:
        """``past``: tokens before ``input_ids`` (decoding with a key/value cache)."""
        if input_ids.dim() != 2:
            raise ValueError("input_ids must be [B, L], got shape %s" % (tuple(input_ids.shape),))
        end = past + input_ids.shape[1]
        if end > self.position_embeddings.num_embeddings:
            raise ValueError(
                "input_ids has %d tokens, more than max_position_embeddings %d"
                % (end, self.position_embeddings.num_embeddings)
            )
        x = self.word_embeddings(input_ids) + self.position_embeddings(
            self.position_ids[:, past:end]
        )
        return self.dropout(self.LayerNorm(x))


class BlipTextSelfAttention(nn.Module):
    """Separate ``query``/``key``/``value`` projections; keys and values come from the text
    (self-attention) or from the image tokens (cross-attention, ``kv_dim`` wide)."""

    def __init__(self, dim: int, kv_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def key_values(self, context: Tensor) -> Tuple[Tensor, Tensor]:
        return self._heads(self.key(context)), self._heads(self.value(context))

    def forward(
        self,
        x: Tensor,
        context: Optional[Tensor],
        bias: Optional[Tensor],
        kv: Optional[Tuple[Tensor, Tensor]] = None,
    ) -> Tensor:
        q = self._heads(self.query(x))
        k, v = self.key_values(context) if kv is None else kv
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if bias is None else bias.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
            scale=1.0 / math.sqrt(q.shape[-1]),
        )
        return out.transpose(1, 2).reshape(x.shape)


class BlipTextSelfOutput(nn.Module):
    """Post-norm residual: ``LayerNorm(dense(h) + x)``."""

    def __init__(self, dim: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BlipTextAttention(nn.Module):
    def __init__(self, config: BlipConfig, kv_dim: int):
        super().__init__()
        d = config.text_width
        self.self = BlipTextSelfAttention(
            d, kv_dim, config.text_heads, config.text_attention_dropout
        )
        self.output = BlipTextSelfOutput(d, d, config.text_eps, config.text_dropout)

    def forward(
        self, x: Tensor, context: Optional[Tensor], bias: Optional[Tensor], kv=None
    ) -> Tensor:
        return self.output(self.self(x, context, bias, kv), x)


class BlipTextIntermediate(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


# Hugging Face names this block's output module "output" too (a BertOutput); same math
BlipTextOutput = BlipTextSelfOutput


class BlipTextLayer(nn.Module):
    """Self-attention, cross-attention to the image (when given), feed-forward; each post-norm."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        d = config.text_width
        self.attention = BlipTextAttention(config, d)
        self.crossattention = BlipTextAttention(config, config.vision_width)
        self.intermediate = BlipTextIntermediate(d, config.text_mlp)
        self.output = BlipTextOutput(d, config.text_mlp, config.text_eps, config.text_dropout)

    def forward(
        self,
        x: Tensor,
        self_bias: Optional[Tensor],
        image_embeds: Optional[Tensor],
        image_bias: Optional[Tensor],
        image_kv: Optional[Tuple[Tensor, Tensor]] = None,
        cache: Optional[Dict[str, Tensor]] = None,
    ) -> Tensor:
        self_kv = None
        if cache is not None:  # decoding: this layer's keys/values of the earlier tokens
            k, v = self.attention.self.key_values(x)
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            self_kv = (k, v)
        x = self.attention(x, x, self_bias, self_kv)
        if image_embeds is not None or image_kv is not None:
            x = self.crossattention(x, image_embeds, image_bias, image_kv)
        return self.output(self.intermediate(x), x)


class BlipTextEncoder(nn.Module):
    def __init__(self, config: BlipConfig):
        super().__init__()
        self.layer = nn.ModuleList(BlipTextLayer(config) for _ in range(config.text_layers))

    def forward(self, x, self_bias, image_embeds, image_bias, image_kv=None, cache=None) -> Tensor:
        for i, layer in enumerate(self.layer):
            kv = None if image_kv is None else image_kv[i]
            x = layer(
                x, self_bias, image_embeds, image_bias, kv, None if cache is None else cache[i]
            )
        return x


class BlipTextModel(nn.Module):
    """Token ids ``[B, L]`` -> hidden states ``[B, L, D]``.

    ``image_embeds [B, N, Dv]`` switches the cross-attention on (``image_mask [B, N]`` masks
    image tokens; default all visible); ``causal=True`` makes the self-attention causal (the
    captioning decoder). ``attention_mask [B, L]`` (1 keep, 0 pad) masks text padding.
    ``image_kv`` (from :meth:`image_key_values`) replaces ``image_embeds`` when the same images
    are attended to many times (caption decoding): their keys/values are projected once.
    ``cache`` (causal only, no ``attention_mask``): one dict per layer holding the keys/values
    of the tokens before ``input_ids``, extended in place (``[{} for _ in layers]`` to start).
    """

    def __init__(self, config: BlipConfig):
        super().__init__()
        self.embeddings = BlipTextEmbeddings(config)
        self.encoder = BlipTextEncoder(config)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        image_embeds: Optional[Tensor] = None,
        image_mask: Optional[Tensor] = None,
        causal: bool = False,
        image_kv: Optional[List[Tuple[Tensor, Tensor]]] = None,
        cache: Optional[List[Dict[str, Tensor]]] = None,
    ) -> Tensor:
        past = 0
        if cache is not None:
            if not causal or attention_mask is not None:
                raise ValueError("cache is for causal decoding without attention_mask")
            if len(cache) != len(self.encoder.layer):
                raise ValueError("cache needs one dict per layer (%d)" % len(self.encoder.layer))
            past = cache[0]["k"].shape[2] if "k" in cache[0] else 0
        x = self.embeddings(input_ids, past)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                "attention_mask shape %s differs from input_ids shape %s"
                % (tuple(attention_mask.shape), tuple(input_ids.shape))
            )
        pad = padding_bias(attention_mask, x.dtype)
        self_bias = pad
        if causal and x.shape[1] > 1:  # one new token may see every earlier one: no mask
            self_bias = causal_bias(x.shape[1], pad, x.dtype, x.device, past)
        if image_embeds is not None and (
            image_embeds.dim() != 3 or image_embeds.shape[0] != input_ids.shape[0]
        ):
            raise ValueError(
                "image_embeds must be [B, N, D] with B = %d texts, got shape %s"
                % (input_ids.shape[0], tuple(image_embeds.shape))
            )
        image_bias = padding_bias(image_mask, x.dtype)
        return self.encoder(x, self_bias, image_embeds, image_bias, image_kv, cache)

    def image_key_values(self, image_embeds: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """Every layer's cross-attention keys and values of ``image_embeds`` (per head)."""
        return [layer.crossattention.self.key_values(image_embeds) for layer in self.encoder.layer]


class BlipTextPredictionHeadTransform(nn.Module):
    def __init__(self, config: BlipConfig):
        super().__init__()
        self.dense = nn.Linear(config.text_width, config.text_width)
        self.LayerNorm = nn.LayerNorm(config.text_width, eps=config.text_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BlipTextLMPredictionHead(nn.Module):
    """dense-GELU-LN, then the vocabulary projection ``decoder`` whose weight is the word
    embedding (tied) and whose bias is ``bias`` (the same Parameter, as in BERT/HF)."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        self.transform = BlipTextPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.text_width, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # tied; BlipTextLMHeadModel.tie_weights keeps it so

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class BlipTextOnlyMLMHead(nn.Module):
    def __init__(self, config: BlipConfig):
        super().__init__()
        self.predictions = BlipTextLMPredictionHead(config)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictions(x)


_TIED_KEYS = (
    ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
    ("cls.predictions.decoder.bias", "cls.predictions.bias"),
)


def _fill_tied_keys(module, state_dict, prefix, *args) -> None:
    """Hugging Face's ``save_pretrained`` (safetensors) leaves the tied head keys out, while
    ``state_dict()`` has them: accept both with ``strict=True`` by filling in the copies."""
    for tied, source in _TIED_KEYS:
        if prefix + tied not in state_dict and prefix + source in state_dict:
            state_dict[prefix + tied] = state_dict[prefix + source]


class BlipTextLMHeadModel(nn.Module):
    """The captioning decoder: causal :class:`BlipTextModel` (``bert``) + LM head (``cls``),
    output projection tied to the word embedding."""

    def __init__(self, config: BlipConfig):
        super().__init__()
        self.bert = BlipTextModel(config)
        self.cls = BlipTextOnlyMLMHead(config)
        self.tie_weights()
        self.register_load_state_dict_pre_hook(_fill_tied_keys)
        # load_state_dict(assign=True) replaces each Parameter by its own tensor: tie again
        self.register_load_state_dict_post_hook(lambda module, _: module.tie_weights())

    def tie_weights(self) -> None:
        predictions = self.cls.predictions
        predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        predictions.decoder.bias = predictions.bias

    def forward(
        self,
        input_ids: Tensor,
        image_embeds: Optional[Tensor],
        attention_mask: Optional[Tensor] = None,
        image_mask: Optional[Tensor] = None,
        image_kv: Optional[List[Tuple[Tensor, Tensor]]] = None,
        last_only: bool = False,
        cache: Optional[List[Dict[str, Tensor]]] = None,
    ) -> Tensor:
        """Next-token logits ``[B, L, V]`` (position ``i`` predicts token ``i + 1``); with
        ``last_only`` only the last position's ``[B, 1, V]`` (what decoding needs)."""
        hidden = self.bert(
            input_ids,
            attention_mask,
            image_embeds,
            image_mask,
            causal=True,
            image_kv=image_kv,
            cache=cache,
        )
        return self.cls(hidden[:, -1:] if last_only else hidden)
