"""CLIP's byte-level BPE tokenizer: text -> ``[N, context_length]`` token ids.

* Clean-up (:func:`~.clip_text_clean.clean_text`): character fixes, HTML unescape, whitespace
  collapsed, lower-cased.
* Pre-tokenisation: the special tokens, the English contractions ``'s 't 're 've 'm 'll 'd``,
  runs of letters, single digits, runs of other non-space characters.
* Each piece's UTF-8 bytes map to printable characters (the byte-to-unicode table below), the
  last one marked as word-final (``</w>``), and adjacent symbols are merged by the BPE merges
  of OpenAI's release, lowest rank first.
* Vocabulary (49,408): the 256 byte symbols, the same with ``</w>``, one token per merge
  (48,894), then ``<start_of_text>`` (49406) and ``<end_of_text>`` (49407).
* Each row is ``[SOT] + tokens + [EOT]`` zero-padded to the context length (77); longer rows
  are cut to the context length with EOT as their last token.

The merges file ``bpe_simple_vocab_16e6.txt.gz`` ships with cvops (MIT licence, see NOTICE in
this folder).
"""

import gzip
import os
import unicodedata
from functools import cache, lru_cache
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .clip_text_clean import clean_text

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2  # OpenAI's tokenizer uses the first 48,894 merges of the file
SOT, EOT = "<start_of_text>", "<end_of_text>"
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


@cache
def byte_to_unicode() -> Dict[int, str]:
    """A printable character per byte value: printable Latin-1 bytes map to themselves, the
    other 68 (controls, space, ...) to U+0100 onwards, in byte order. BPE then never sees
    whitespace or control characters."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0x100
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return table


def _kind(ch: str) -> str:
    """``"L"`` letter, ``"N"`` number, ``" "`` whitespace, ``"o"`` other."""
    if ch.isspace():
        return " "
    return {"L": "L", "N": "N"}.get(unicodedata.category(ch)[0], "o")


def pretokenize(text: str, specials: Sequence[str] = (SOT, EOT)) -> List[str]:
    """Split cleaned (lower-case) text the way CLIP's pattern
    ``<special>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` does: at each
    position the first alternative that matches, whitespace skipped."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        special = next((s for s in specials if text.startswith(s, i)), None)
        if special is not None:
            pieces.append(text[i : i + len(special)])
            i += len(special)
            continue
        if text[i] == "'":
            c = next((c for c in CONTRACTIONS if text.startswith(c, i + 1)), None)
            if c is not None:
                pieces.append(text[i : i + 1 + len(c)])
                i += 1 + len(c)
                continue
        kind = _kind(text[i])
        if kind == " ":
            i += 1
            continue
        j = i + 1
        if kind != "N":  # letters and "other" characters come in runs, digits one by one
            while j < n and _kind(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _merge(symbols: Tuple[str, ...], pair: Tuple[str, str]) -> Tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


class CLIPTokenizer:
    """``tokenizer(texts)`` -> ``LongTensor [N, context_length]``; ``encode``/``decode``
    for single strings without the special tokens."""

    def __init__(self, bpe_path: Optional[str] = None, context_length: int = 77):
        if context_length < 2:
            raise ValueError("context_length must be at least 2, got %d" % context_length)
        self.context_length = context_length
        path = bpe_path or DEFAULT_BPE_PATH
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : NUM_MERGES + 1]  # line 0 is a version header
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError("%s is not a CLIP BPE merges file" % path)
        self.bpe_ranks = {m: r for r, m in enumerate(merges)}
        symbols = list(byte_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.byte_decoder = {c: b for b, c in byte_to_unicode().items()}
        self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(vocab)
        self._cache: Dict[str, Tuple[str, ...]] = {}

    def bpe(self, piece: str) -> Tuple[str, ...]:
        """The BPE symbols of one pre-tokenised piece (already byte-mapped)."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        symbols = tuple(piece[:-1]) + (piece[-1] + "</w>",)
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, NUM_MERGES))
            if best not in self.bpe_ranks:
                break
            symbols = _merge(symbols, best)
        if len(self._cache) < 100_000:
            self._cache[piece] = symbols
        return symbols

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (cleaned first), without start/end tokens."""
        ids = []
        table = byte_to_unicode()
        for piece in pretokenize(clean_text(text)):
            if piece in (SOT, EOT):
                ids.append(self.encoder[piece])
                continue
            mapped = "".join(table[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def decode(self, ids) -> str:
        """Text of token ids (start/end tokens dropped); word ends become spaces."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        symbols = []
        for i in map(int, ids):
            if i == self.eot_token_id:  # the padding after it is not text
                break
            if i != self.sot_token_id:
                symbols.append(self.decoder[i])
        text = "".join(symbols).replace("</w>", byte_to_unicode()[0x20])  # word end: a space
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").strip()

    def __call__(
        self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None
    ) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 2:
            raise ValueError("context_length must be at least 2, got %d" % length)
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:  # truncate, keeping the end-of-text token
                ids = ids[: length - 1] + [self.eot_token_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@lru_cache(maxsize=2)
def get_tokenizer(context_length: int = 77) -> CLIPTokenizer:
    """A shared tokenizer (reading the merges file takes a moment)."""
    return CLIPTokenizer(context_length=context_length)
