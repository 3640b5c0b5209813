"""A word-level tokenizer for the encoder visobert_multitask trains from scratch (its reviews), when
no pretrained tokenizer is used. (caer_clip's tiny CLIP has its own in caer_clip/clip.py, so that
file copies alone.)"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import torch


class WordTokenizer:
    """Lower-cased, NFC-normalised word and punctuation tokens; a token's id is its position in `vocab`.

    Unknown words become `<unk>`: a vocabulary built from training text meets unseen words in
    validation, test and user text, and those texts must still be encoded (raising would make them
    unscorable). A vocabulary built from every text it will encode, as caer_clip's prompts, never meets
    one. `vocab` holds the specials `<s>`, `</s>`, `<pad>` and `<unk>` wherever the encoder expects them
    (`from_texts` puts them first, in XLM-R's order). Past `max_len` ids a text is cut, `<s>` first and
    `</s>` last kept, as CLIP's and XLM-R's own tokenizers do."""

    SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
    WORD = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab: list[str], context_length: int = 77):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        missing = [s for s in self.SPECIALS if s not in self.index]
        if missing:
            raise ValueError(f"WordTokenizer: the vocabulary lacks the special token(s) {missing}")
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (self.index[s] for s in self.SPECIALS)
        self.context_length = context_length  # row length of the batch form, `__call__`

    @classmethod
    def from_texts(cls, texts: list[str], min_freq: int = 1, max_size: int = 30000) -> WordTokenizer:
        """Specials first in XLM-R's order (<s> 0, <pad> 1, </s> 2, <unk> 3), so an XLM-R-style encoder
        derives its padding-aware position ids alike for this and the SentencePiece tokenizer; then
        the words, most frequent first."""
        counts = Counter(tok for text in texts for tok in cls.split(text))
        # Sorted by (-count, word) so the vocabulary depends only on the texts, not on hash order.
        words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_freq]
        return cls(list(cls.SPECIALS) + words[: max_size - len(cls.SPECIALS)])

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls.WORD.findall(unicodedata.normalize("NFC", text).lower())

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, max_len: int) -> list[int]:
        ids = [self.index.get(tok, self.unk_id) for tok in self.split(text)]
        return [self.bos_id] + ids[: max_len - 2] + [self.eos_id]

    def __call__(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        """(N, L) ids padded with `<pad>` after `</s>`: the batch form of open_clip's tokenizers."""
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text, length)
            out[row, : len(ids)] = torch.tensor(ids)
        return out
