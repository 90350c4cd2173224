"""Caption decoding for BLIP: greedy search and beam search over a next-token function.

Both take ``next_logits(ids [N, L]) -> [N, V]`` (the decoder's logits at the last position)
and a prompt ``[B, P]`` (BLIP: the ``[DEC]`` token, optionally followed by a text prompt), and
return ``[B, P + T]`` ids, the prompt included. The rules follow Hugging Face's ``generate``
(transformers 5.x) so that the same weights give the same tokens:

- ``max_length`` counts the prompt; ``min_length`` (also counting the prompt) forbids the end
  token while the sequence is shorter;
- greedy: a finished row is padded with ``pad_id`` until every row has ended;
- beam search: at each step the best ``2 * num_beams`` continuations over all beams are
  ranked; those among the first ``num_beams`` that end (end token, or ``max_length`` reached)
  become hypotheses scored ``sum log p / generated_length ** length_penalty``; the best
  ``num_beams`` that do not end continue. A batch item is done when it has ``num_beams``
  hypotheses and its best running beam, normalised by the current generated length, cannot
  beat the worst of them (``early_stopping=False``) or as soon as it has ``num_beams``
  hypotheses (``early_stopping=True``). Shorter results are padded with ``pad_id`` (Hugging
  Face pads beam results with the end token when ``pad_id`` is 0).
"""

from typing import Callable, List, Tuple

import torch
from torch import Tensor

NextLogits = Callable[[Tensor], Tensor]


def check_lengths(prompt: Tensor, max_length: int, min_length: int) -> None:
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError("prompt must be [B, P] with P >= 1, got shape %s" % (tuple(prompt.shape),))
    if max_length <= prompt.shape[1]:
        raise ValueError(
            "max_length (%d) must exceed the prompt length (%d)" % (max_length, prompt.shape[1])
        )
    if min_length < 0:
        raise ValueError("min_length must be >= 0, got %d" % min_length)


def forbid_end(logits: Tensor, length: int, min_length: int, eos_id: int) -> Tensor:
    if length < min_length:
        logits = logits.clone()
        logits[:, eos_id] = float("-inf")
    return logits


@torch.no_grad()
def greedy_search(
    next_logits: NextLogits,
    prompt: Tensor,
    *,
    max_length: int,
    eos_id: int,
    pad_id: int,
    min_length: int = 0,
) -> Tensor:
    check_lengths(prompt, max_length, min_length)
    ids = prompt
    running = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    while ids.shape[1] < max_length:
        logits = forbid_end(next_logits(ids).float(), ids.shape[1], min_length, eos_id)
        token = logits.argmax(dim=-1)
        token = torch.where(running, token, torch.full_like(token, pad_id))
        ids = torch.cat([ids, token[:, None]], dim=1)
        running &= token != eos_id
        if not bool(running.any()):
            break
    return ids


@torch.no_grad()
def beam_search(
    next_logits: NextLogits,
    prompt: Tensor,
    *,
    num_beams: int,
    max_length: int,
    eos_id: int,
    pad_id: int,
    min_length: int = 0,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
) -> Tensor:
    """``next_logits`` is called with ``[B * num_beams, L]`` ids, beams of one item adjacent
    (so per-item inputs such as image tokens are ``repeat_interleave``-d by ``num_beams``)."""
    check_lengths(prompt, max_length, min_length)
    if num_beams < 1:
        raise ValueError("num_beams must be >= 1, got %d" % num_beams)
    batch, prompt_len = prompt.shape
    device = prompt.device
    seqs = prompt[:, None, :].expand(batch, num_beams, prompt_len)
    # all beams start identical: only the first one may expand at the first step
    scores = torch.zeros(batch, num_beams, device=device)
    scores[:, 1:] = -1e9
    hypotheses: List[List[Tuple[float, Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    length = prompt_len
    while length < max_length:
        logits = next_logits(seqs.reshape(batch * num_beams, length)).float()
        logp = forbid_end(torch.log_softmax(logits, dim=-1), length, min_length, eos_id)
        vocab = logp.shape[-1]
        total = (logp.view(batch, num_beams, vocab) + scores[..., None]).view(batch, -1)
        top_scores, top_index = total.topk(2 * num_beams, dim=1)
        beam, token = top_index // vocab, top_index % vocab
        parents = seqs.gather(1, beam[..., None].expand(-1, -1, length))
        candidates = torch.cat([parents, token[..., None]], dim=2)
        ends = (token == eos_id) | (length + 1 >= max_length)

        generated = length + 1 - prompt_len
        for b in range(batch):
            if done[b]:
                continue
            # only the first num_beams candidates may become hypotheses; the rest are spares
            # that keep num_beams beams running when some of the best ones end
            for j in range(num_beams):
                if bool(ends[b, j]):
                    score = float(top_scores[b, j] / (generated**length_penalty))
                    hypotheses[b].append((score, candidates[b, j]))
            hypotheses[b].sort(key=lambda h: -h[0])  # stable: earlier hypotheses win ties
            del hypotheses[b][num_beams:]

        running_scores = top_scores - 1e9 * ends.float()
        keep = running_scores.topk(num_beams, dim=1).indices
        seqs = candidates.gather(1, keep[..., None].expand(-1, -1, length + 1))
        scores = running_scores.gather(1, keep)
        length += 1

        for b in range(batch):
            if done[b] or len(hypotheses[b]) < num_beams:
                continue
            best_running = float(scores[b, 0] / ((length - prompt_len) ** length_penalty))
            if early_stopping or best_running <= hypotheses[b][-1][0]:
                done[b] = True
        if all(done) or bool(ends.all()):
            break

    best = [hyps[0][1] for hyps in hypotheses]
    out = torch.full((batch, max(len(s) for s in best)), pad_id, dtype=prompt.dtype, device=device)
    for b, s in enumerate(best):
        out[b, : len(s)] = s
    return out
