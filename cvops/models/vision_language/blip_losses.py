"""BLIP's three pre-training losses (Li et al., 2022, sec. 3.2) and their sum.

- ITC, image-text contrastive: in-batch InfoNCE both ways on the normalised projections,
  divided by a temperature (BLIP learns it, init 0.07; here it is an argument, since Hugging
  Face's checkpoints do not store it). Pairs showing the same image (``image_ids``) are all
  positives, with equal target weight, as in BLIP's retrieval fine-tuning. BLIP's momentum
  encoder, queue and soft (distilled) targets are not included.
- ITM, image-text matching: binary classification of the ``[ENC]`` token of the image-grounded
  encoder; for every image one hard negative text and for every text one hard negative image
  are sampled with probability ``softmax(similarity)`` over the non-matching pairs.
- LM, captioning: next-token cross-entropy of the causal decoder with label smoothing 0.1
  (BLIP's value), padding and prompt tokens ignored.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def _positives(n_img: int, n_txt: int, image_ids: Optional[Tensor], device) -> Tensor:
    """``[n_img, n_txt]`` bool: text j describes image i."""
    if image_ids is None:
        if n_img != n_txt:
            raise ValueError(
                "without image_ids, image and text batches must pair up 1:1, got %d images "
                "and %d texts" % (n_img, n_txt)
            )
        return torch.eye(n_img, dtype=torch.bool, device=device)
    if image_ids.shape != (n_txt,):
        raise ValueError(
            "image_ids must be [%d] (one id per text/image pair), got shape %s"
            % (n_txt, tuple(image_ids.shape))
        )
    ids = image_ids.to(device)
    return ids[:, None] == ids[None, :]


def itc_loss(
    image_feat: Tensor,
    text_feat: Tensor,
    temperature: float = 0.07,
    image_ids: Optional[Tensor] = None,
) -> Tensor:
    """Symmetric contrastive loss of ``image_feat [B, E]`` and ``text_feat [B, E]`` (row i of
    each is pair i; both L2-normalised). ``image_ids [B]``: pairs with equal ids are positives
    of each other."""
    if image_feat.dim() != 2 or text_feat.dim() != 2 or image_feat.shape != text_feat.shape:
        raise ValueError(
            "image_feat and text_feat must both be [B, E], got %s and %s"
            % (tuple(image_feat.shape), tuple(text_feat.shape))
        )
    if not temperature > 0:
        raise ValueError("temperature must be > 0, got %r" % temperature)
    positives = _positives(len(image_feat), len(text_feat), image_ids, image_feat.device)
    targets = positives.float() / positives.sum(1, keepdim=True)
    sim_i2t = image_feat @ text_feat.t() / temperature
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * targets).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_i2t.t(), dim=1) * targets).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


@torch.no_grad()
def sample_hard_negatives(
    similarity: Tensor,
    image_ids: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """For ``similarity [B, B]`` (image i vs text j), sample for every image a negative text
    index and for every text a negative image index, with probability proportional to
    ``softmax`` of the similarity over the non-matching pairs (BLIP's hard-negative mining:
    similar but wrong pairs are drawn most often)."""
    n = similarity.shape[0]
    if similarity.dim() != 2 or similarity.shape[1] != n or n < 2:
        raise ValueError(
            "similarity must be square [B, B] with B >= 2, got %s" % (tuple(similarity.shape),)
        )
    positives = _positives(n, n, image_ids, similarity.device)
    if bool(positives.all(1).any()):
        raise ValueError("a pair has no negative in the batch (every text shows its image)")
    sim = similarity.float()
    weights_i2t = F.softmax(sim, dim=1).masked_fill(positives, 0)
    weights_t2i = F.softmax(sim.t(), dim=1).masked_fill(positives, 0)
    # rows of tiny weights (a confident model) still sample: multinomial renormalises
    neg_text = torch.multinomial(weights_i2t + 1e-12 * ~positives, 1, generator=generator)
    neg_image = torch.multinomial(weights_t2i + 1e-12 * ~positives, 1, generator=generator)
    return neg_text[:, 0], neg_image[:, 0]


def itm_loss(itm_logits: Tensor, num_positives: int) -> Tensor:
    """Cross-entropy of ITM logits ``[B_pos + B_neg, 2]`` whose first ``num_positives`` rows
    are matching pairs (label 1) and the rest non-matching (label 0)."""
    if itm_logits.dim() != 2 or itm_logits.shape[1] != 2:
        raise ValueError("itm_logits must be [N, 2], got %s" % (tuple(itm_logits.shape),))
    labels = torch.zeros(len(itm_logits), dtype=torch.long, device=itm_logits.device)
    labels[:num_positives] = 1
    return F.cross_entropy(itm_logits, labels)


def lm_targets(
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    pad_token_id: Optional[int] = None,
    prompt_length: int = 0,
) -> Tensor:
    """Decoder targets: the ids with padding and the first ``prompt_length`` tokens set to
    ``IGNORE_INDEX`` (the decoder is not asked to produce its own prompt)."""
    targets = input_ids.clone()
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask == 0, IGNORE_INDEX)
    elif pad_token_id is not None:
        targets = targets.masked_fill(input_ids == pad_token_id, IGNORE_INDEX)
    targets[:, :prompt_length] = IGNORE_INDEX
    return targets


def lm_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.1) -> Tensor:
    """Next-token cross-entropy: ``logits [B, L, V]`` at position i predict ``targets[:, i+1]``
    (``IGNORE_INDEX`` skipped), label-smoothed, mean over the counted tokens."""
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(
            "logits must be [B, L, V] and targets [B, L], got %s and %s"
            % (tuple(logits.shape), tuple(targets.shape))
        )
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        targets[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def blip_losses(
    retrieval,
    captioning,
    pixel_values: Tensor,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    image_ids: Optional[Tensor] = None,
    temperature: float = 0.07,
    label_smoothing: float = 0.1,
    prompt_length: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Tensor]:
    """ITC + ITM (on a :class:`BlipRetrieval`) and LM (on a :class:`BlipCaptioning`) for one
    batch of image-caption pairs; ``input_ids`` are tokenizer output (``[CLS] caption [SEP]``
    + padding). As in BLIP, the first token is replaced by ``[ENC]`` for ITM and by ``[DEC]``
    for the decoder. The image is encoded once when both models share ``vision_model`` (BLIP
    pre-training shares it). Returns ``{"itc", "itm", "lm", "loss"}`` (``loss`` the sum)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            "input_ids must be [B, L] with B = %d images, got shape %s"
            % (pixel_values.shape[0], tuple(input_ids.shape))
        )
    cfg = retrieval.config
    n = input_ids.shape[0]
    image_embeds = retrieval.encode_image(pixel_values)
    image_feat = retrieval.image_features(image_embeds)
    text_feat = retrieval.text_features(input_ids, attention_mask)
    itc = itc_loss(image_feat, text_feat, temperature, image_ids)

    neg_text, neg_image = sample_hard_negatives(
        image_feat @ text_feat.t(), image_ids, generator=generator
    )
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    enc_ids = input_ids.clone()
    enc_ids[:, 0] = cfg.enc_token_id
    # rows: (image i, text i), (image of text i's negative, text i), (image i, its negative text)
    all_ids = torch.cat([enc_ids, enc_ids, enc_ids[neg_text]])
    all_mask = torch.cat([mask, mask, mask[neg_text]])
    all_images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
    itm = itm_loss(retrieval.itm_logits(all_ids, all_images, all_mask), n)

    if captioning.vision_model is retrieval.vision_model:
        caption_images = image_embeds
    else:
        caption_images = captioning.encode_image(pixel_values)
    dec_ids = input_ids.clone()
    dec_ids[:, 0] = captioning.config.bos_token_id
    logits = captioning.decoder_logits(dec_ids, caption_images, attention_mask)
    targets = lm_targets(dec_ids, attention_mask, cfg.pad_token_id, prompt_length)
    lm = lm_loss(logits, targets, label_smoothing)
    return {"itc": itc, "itm": itm, "lm": lm, "loss": itc + itm + lm}
