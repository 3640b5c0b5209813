"""Aspect x sentiment review data: two real label formats, a word-level tokenizer, synthetic reviews.

Label encoding used everywhere in this project: `labels` is an (N, A) int64 tensor, one state per
aspect: 0 = absent (the review does not mention the aspect), 1 = positive, 2 = negative,
3 = neutral. What the model is trained to predict from it is decided in `losses.training_targets`.

Formats read:
  (a) columns: a CSV with a text column and one column per aspect holding Positive / Negative /
      Neutral or an empty cell (the format of the seed's own project);
  (b) UIT-ViSFD: a CSV with a text column (`comment`) and a `label` column of
      `{ASPECT#Polarity};{ASPECT#Polarity};...` strings; aspects not listed are absent. The
      dataset writes `{OTHERS}` without a polarity; that one case is accepted and counted.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.runtime import DataError, read_text

STATES = ("absent", "positive", "negative", "neutral")
ABSENT, POSITIVE, NEGATIVE, NEUTRAL = range(4)
POLARITY_TO_STATE = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}
# UIT-ViSFD (Luc Phan et al. 2021): 10 aspects + OTHERS.
VISFD_ASPECTS = ("BATTERY", "CAMERA", "DESIGN", "FEATURES", "GENERAL", "PERFORMANCE", "PRICE", "SCREEN",
                 "SER&ACC", "STORAGE", "OTHERS")
TEXT_COLUMNS = ("text", "comment", "review", "sentence", "content")
LABEL_STRING = re.compile(r"\{([^{}#]+)(?:#([^{}#]+))?\}")


@dataclass
class ReviewSplit:
    texts: list[str]  # NFC-normalised review texts
    labels: torch.Tensor  # (N, A) int64 states, see the module docstring
    aspects: tuple[str, ...]  # aspect names, column order of `labels`
    source: str  # file the split was read from (or "synthetic")


# ----------------------------------------------------------------------------- reading files


def read_utf8_rows(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """CSV header and rows. Bytes that are not UTF-8 raise a DataError naming the file and line
    (common.runtime.read_text), instead of the bare UnicodeDecodeError that `open()` gives."""
    path = Path(path)
    text = read_text(path)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DataError(f"{path}: the file is empty (no header)")
    return [h.strip() for h in rows[0]], rows[1:]


def _normalise_text(text: str, path: Path, line: int) -> str:
    # Vietnamese text arrives both precomposed and decomposed (tone mark as a combining
    # character); NFC makes the two spell the same token.
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise DataError(f"{path}:{line}: empty review text")
    return text


def _polarity_state(value: str, path: Path, line: int, aspect: str) -> int:
    state = POLARITY_TO_STATE.get(value.strip().lower())
    if state is None:
        raise DataError(f"{path}:{line}: unknown polarity {value!r} for aspect {aspect!r}; "
                        f"expected one of Positive, Negative, Neutral")
    return state


def _text_column(header: list[str], path: Path, text_column: str | None) -> int:
    lowered = [h.lower() for h in header]
    candidates = [text_column.lower()] if text_column else list(TEXT_COLUMNS)
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    raise DataError(f"{path}:1: no text column; looked for {candidates} in header {header}")


def read_aspect_columns(path: str | Path, aspects: tuple[str, ...] | None = None,
                        text_column: str | None = None) -> ReviewSplit:
    """Format (a): one column per aspect. Without `aspects`, every non-text column is an aspect."""
    path = Path(path)
    header, rows = read_utf8_rows(path)
    text_idx = _text_column(header, path, text_column)
    columns = {h: i for i, h in enumerate(header) if i != text_idx}
    if aspects is None:
        aspects = tuple(columns)
    if not aspects:
        raise DataError(f"{path}:1: no aspect columns in header {header}; expected text plus one column per aspect")
    missing = [a for a in aspects if a not in columns]
    if missing:
        raise DataError(f"{path}:1: aspect column(s) {missing} not in header {header}")
    texts, labels = [], []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
        texts.append(_normalise_text(row[text_idx], path, line))
        labels.append([ABSENT if not row[columns[a]].strip() else _polarity_state(row[columns[a]], path, line, a)
                       for a in aspects])
    return ReviewSplit(texts, torch.tensor(labels, dtype=torch.long).view(-1, len(aspects)), tuple(aspects), str(path))


def parse_label_string(label: str, where: str) -> dict[str, str | None]:
    """`{SCREEN#Positive};{CAMERA#Negative};{OTHERS};` -> {'SCREEN': 'Positive', ...}.

    Anything besides `{...}` items and `;` separators is malformed and raises, naming `where`."""
    items, leftover, last = {}, [], 0
    for match in LABEL_STRING.finditer(label):
        leftover.append(label[last:match.start()])
        last = match.end()
        aspect, polarity = match.group(1).strip().upper(), match.group(2)
        if aspect in items:
            raise DataError(f"{where}: aspect {aspect} labelled twice in {label!r}")
        items[aspect] = polarity.strip() if polarity is not None else None
    leftover.append(label[last:])
    junk = "".join(leftover).replace(";", "").strip()
    if junk or not items:
        raise DataError(f"{where}: malformed label string {label!r}; expected '{{ASPECT#Polarity}};...'")
    return items


def read_visfd(path: str | Path, aspects: tuple[str, ...] | None = None,
               text_column: str | None = None) -> tuple[ReviewSplit, int]:
    """Format (b): UIT-ViSFD label strings. Returns the split and how many `{OTHERS}` items had no
    polarity (those count as present and neutral: the dataset gives OTHERS no sentiment)."""
    path = Path(path)
    header, rows = read_utf8_rows(path)
    text_idx = _text_column(header, path, text_column)
    lowered = [h.lower() for h in header]
    if "label" not in lowered:
        raise DataError(f"{path}:1: no 'label' column in header {header}")
    label_idx = lowered.index("label")
    parsed, texts = [], []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
        texts.append(_normalise_text(row[text_idx], path, line))
        parsed.append((line, parse_label_string(row[label_idx], f"{path}:{line}")))
    if aspects is None:  # the aspects seen in this file, in the dataset's own order first
        seen = {a for _, items in parsed for a in items}
        aspects = tuple([a for a in VISFD_ASPECTS if a in seen] + sorted(seen - set(VISFD_ASPECTS)))
    index = {a: i for i, a in enumerate(aspects)}
    labels = torch.zeros(len(parsed), len(aspects), dtype=torch.long)
    no_polarity = 0
    for row_i, (line, items) in enumerate(parsed):
        for aspect, polarity in items.items():
            if aspect not in index:
                raise DataError(f"{path}:{line}: unknown aspect {aspect!r}; known aspects: {list(aspects)}")
            if polarity is None:
                if aspect != "OTHERS":
                    raise DataError(f"{path}:{line}: aspect {aspect} has no polarity ('{{{aspect}#Positive}}')")
                no_polarity += 1
                labels[row_i, index[aspect]] = NEUTRAL
            else:
                labels[row_i, index[aspect]] = _polarity_state(polarity, path, line, aspect)
    return ReviewSplit(texts, labels, tuple(aspects), str(path)), no_polarity


def detect_format(path: str | Path) -> str:
    header, _ = read_utf8_rows(path)
    return "visfd" if "label" in [h.lower() for h in header] else "columns"


def find_split_file(root: Path, split: str) -> Path:
    names = {"train": ("train",), "val": ("val", "dev", "valid", "validation"), "test": ("test",)}[split]
    for name in names:
        for candidate in (root / f"{name}.csv", root / f"{name.capitalize()}.csv"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{root}: no {split} split; expected one of {[n + '.csv' for n in names]}")


def load_splits(root: str | Path, data_format: str = "auto", aspects: tuple[str, ...] | None = None,
                text_column: str | None = None) -> dict[str, ReviewSplit]:
    """train/val/test from `root`. The aspect list comes from the training file (or `aspects`), and
    the other splits must use the same aspects."""
    root = Path(root)
    splits, no_polarity = {}, 0
    for split in ("train", "val", "test"):
        path = find_split_file(root, split)
        fmt = detect_format(path) if data_format == "auto" else data_format
        if fmt == "visfd":
            splits[split], count = read_visfd(path, aspects, text_column)
            no_polarity += count
        else:
            splits[split] = read_aspect_columns(path, aspects, text_column)
        aspects = splits[split].aspects  # fixed by the training split from here on
    if no_polarity:
        print(f"[data] {no_polarity} '{{OTHERS}}' labels without polarity counted as present, neutral")
    return splits


# ----------------------------------------------------------------------------- tokenizer


class WordTokenizer:
    """Lower-cased word/punctuation tokens, vocabulary from the training texts.

    Special ids follow XLM-R's order (<s>=0, <pad>=1, </s>=2, <unk>=3), so the encoder's
    padding-aware position ids work the same way for this and the SentencePiece tokenizer."""

    SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
    bos_id, pad_id, eos_id, unk_id = range(4)
    WORD = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def from_texts(cls, texts: list[str], min_freq: int = 1, max_size: int = 30000) -> WordTokenizer:
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


class HFTokenizer:
    """The checkpoint's own SentencePiece tokenizer, through transformers."""

    def __init__(self, name: str):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("--encoder needs the `transformers` and `sentencepiece` packages: "
                              "pip install transformers sentencepiece") from e
        self.tok = AutoTokenizer.from_pretrained(name)
        self.pad_id = self.tok.pad_token_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str, max_len: int) -> list[int]:
        return self.tok(text, truncation=True, max_length=max_len)["input_ids"]


# ----------------------------------------------------------------------------- dataset


class ReviewDataset(torch.utils.data.Dataset):
    """Token ids computed once; padding happens per batch in `collate` (to the longest review)."""

    def __init__(self, split: ReviewSplit, tokenizer, max_len: int):
        self.ids = [torch.tensor(tokenizer.encode(t, max_len), dtype=torch.long) for t in split.texts]
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.ids[i], self.labels[i]


def make_collate(pad_id: int):
    def collate(batch):
        ids = torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True, padding_value=pad_id)
        return {"input_ids": ids,  # (B, T) padded at the end
                "attention_mask": ids.ne(pad_id),  # (B, T) True = real token
                "labels": torch.stack([b[1] for b in batch])}  # (B, A)
    return collate


# ----------------------------------------------------------------------------- synthetic reviews

SYN_ASPECTS = ("BATTERY", "CAMERA", "DESIGN", "FEATURES", "GENERAL", "PERFORMANCE", "PRICE", "SCREEN",
               "SER&ACC", "STORAGE")
ASPECT_WORDS = {
    "BATTERY": ("pin", "thời lượng pin", "sạc"),
    "CAMERA": ("camera", "chụp ảnh", "quay phim"),
    "DESIGN": ("thiết kế", "kiểu dáng", "màu sắc"),
    "FEATURES": ("vân tay", "face id", "loa"),
    "GENERAL": ("máy", "điện thoại", "sản phẩm"),
    "PERFORMANCE": ("hiệu năng", "chơi game", "cấu hình"),
    "PRICE": ("giá", "giá tiền", "giá cả"),
    "SCREEN": ("màn hình", "độ sáng màn", "cảm ứng"),
    "SER&ACC": ("nhân viên", "shop", "phụ kiện"),
    "STORAGE": ("bộ nhớ", "dung lượng", "thẻ nhớ"),
}
# Opinion words: most clauses use a word tied to its aspect ("pin trâu", "giá chát"), as Vietnamese
# reviews do; the rest use generic words ("tốt", "tệ") whose aspect only word order tells.
ASPECT_OPINIONS = {
    "BATTERY": (("trâu", "bền bỉ"), ("hao", "chai")),
    "CAMERA": (("nét", "sống động"), ("mờ", "nhòe")),
    "DESIGN": (("sang trọng", "thời trang"), ("thô kệch", "quê mùa")),
    "FEATURES": (("nhạy bén", "tiện lợi"), ("chập chờn", "rè")),
    "GENERAL": (("đáng tiền", "hài lòng"), ("hối hận", "thất vọng")),
    "PERFORMANCE": (("mượt", "mạnh mẽ"), ("giật", "lag")),
    "PRICE": (("rẻ", "hợp lý"), ("đắt", "chát")),
    "SCREEN": (("rực rỡ", "sáng"), ("ám vàng", "tối")),
    "SER&ACC": (("nhiệt tình", "chu đáo"), ("cọc cằn", "thờ ơ")),
    "STORAGE": (("dư dả", "rộng rãi"), ("chật chội", "đầy")),
}
SENTIMENT_WORDS = {
    POSITIVE: ("tốt", "tuyệt vời", "xịn"),
    NEGATIVE: ("tệ", "kém", "dở"),
    NEUTRAL: ("bình thường", "tạm được", "tạm ổn", "trung bình"),
}
INTENSIFIERS = ("", "", "rất", "khá", "hơi", "quá")
CONNECTIVES = (", ", " và ", " nhưng ", ". ", " mà ")
FILLERS = ("mình mới mua", "dùng được một tuần", "nói chung là", "mua cho mẹ", "nhận xét sau hai tháng")


def synthetic_split(n: int, seed: int) -> ReviewSplit:
    """Vietnamese-like reviews: 1-3 aspects per review (most aspects absent), an opinion word per
    aspect (aspect-specific 70% of the time, generic otherwise), aspects that often share the
    review's mood, and negation ("không" + positive word = negative, + negative word = positive),
    so the polarity of a clause cannot be read off one word alone."""
    rng = np.random.default_rng(seed)
    texts, labels = [], np.zeros((n, len(SYN_ASPECTS)), dtype=np.int64)
    for i in range(n):
        k = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
        mood = int(rng.choice([POSITIVE, NEGATIVE, NEUTRAL], p=[0.45, 0.35, 0.2]))
        clauses = []
        for a in rng.choice(len(SYN_ASPECTS), size=k, replace=False):
            # Reviews lean one way: an aspect takes the review's overall mood with probability
            # 0.6, else a polarity of its own, so several aspects often (not always) agree.
            state = mood if rng.random() < 0.6 else int(rng.choice([POSITIVE, NEGATIVE, NEUTRAL], p=[0.45, 0.35, 0.2]))
            negate = state != NEUTRAL and rng.random() < 0.2
            said = {POSITIVE: NEGATIVE, NEGATIVE: POSITIVE}[state] if negate else state
            if said != NEUTRAL and rng.random() < 0.7:
                word = ASPECT_OPINIONS[SYN_ASPECTS[a]][said - 1][rng.integers(2)]
            else:
                word = SENTIMENT_WORDS[said][rng.integers(len(SENTIMENT_WORDS[said]))]
            intensifier = "" if negate else INTENSIFIERS[rng.integers(len(INTENSIFIERS))]
            parts = [ASPECT_WORDS[SYN_ASPECTS[a]][rng.integers(3)], "không" if negate else intensifier, word]
            clauses.append(" ".join(p for p in parts if p))
            labels[i, a] = state
        text = clauses[0]
        for clause in clauses[1:]:
            text += CONNECTIVES[rng.integers(len(CONNECTIVES))] + clause
        if rng.random() < 0.4:
            text = FILLERS[rng.integers(len(FILLERS))] + ", " + text
        texts.append(unicodedata.normalize("NFC", text))
    return ReviewSplit(texts, torch.from_numpy(labels), SYN_ASPECTS, "synthetic")


def synthetic_splits(n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, ReviewSplit]:
    # Distinct seeds per split: the three splits are independent draws of the same generator.
    return {"train": synthetic_split(n_train, seed * 3 + 11), "val": synthetic_split(n_val, seed * 3 + 12),
            "test": synthetic_split(n_test, seed * 3 + 13)}
