"""Aspect x sentiment review data: two real label formats, the tokenizers, synthetic reviews.

`labels` is an (N, A) int64 tensor, one state per aspect: 0 = absent (the review does not mention
it), 1 = positive, 2 = negative, 3 = neutral; the model predicts these four (`losses.NUM_STATES`).

CSV files are read as their sources publish them (UTF-8 with or without BOM, LF or CRLF, line breaks
inside quoted fields): (a) columns, a text column and one column per aspect holding Positive /
Negative / Neutral or nothing (hjsad1994/BERT `multi_label/data/*_multilabel.csv`, text column
`data`); (b) UIT-ViSFD, a text column (`comment`) and a `label` column of
`{ASPECT#Polarity};...` strings, aspects not listed absent. Every bad record of a file is listed in
one DataError (file, physical line where the record starts, column, value). A label cell that is not
a polarity (the seed's data has 'Postive' and 'Posititve') is an error, or with on_bad_label="skip"
read as unlabelled (absent), as the seed's own loader does, and counted.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.runtime import DataError, EpochSampler, make_loader, read_text

STATES = ("absent", "positive", "negative", "neutral")
ABSENT, POSITIVE, NEGATIVE, NEUTRAL = range(4)
POLARITY_TO_STATE = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}
# UIT-ViSFD (Luc Phan et al. 2021): 10 aspects + OTHERS.
VISFD_ASPECTS = ("BATTERY", "CAMERA", "DESIGN", "FEATURES", "GENERAL", "PERFORMANCE", "PRICE", "SCREEN",
                 "SER&ACC", "STORAGE", "OTHERS")
# `data` is the text column of hjsad1994/BERT's files, `comment` UIT-ViSFD's.
TEXT_COLUMNS = ("text", "comment", "review", "sentence", "content", "data")
# File names (without .csv, any letter case) per split: this project's, UIT-ViSFD's Train/Dev/Test,
# hjsad1994/BERT's {train,validation,test}_multilabel.
SPLIT_FILE_STEMS = {"train": ("train", "train_multilabel"),
                    "val": ("val", "dev", "valid", "validation", "validation_multilabel"),
                    "test": ("test", "test_multilabel")}
LABEL_STRING = re.compile(r"\{([^{}#]+)(?:#([^{}#]+))?\}")
MAX_LISTED = 20  # bad records quoted in one DataError; the rest are counted
EVAL_BATCH = 64  # reviews per evaluation batch (no gradients: larger than training's)


@dataclass
class ReviewSplit:
    texts: list[str]  # NFC-normalised review texts
    labels: torch.Tensor  # (N, A) int64 states, see the module docstring
    aspects: tuple[str, ...]  # aspect names, column order of `labels`
    source: str  # file the split was read from (or "synthetic")
    skipped: dict[str, int] = field(default_factory=dict)  # column -> bad label cells read as unlabelled


# ----------------------------------------------------------------------------- reading files


def read_records(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """CSV header and (line, cells) per record, `line` the physical line where the record starts (header:
    1): quoted fields may hold line breaks (~2,200 of the seed's reviews do), so record k is not line
    k + 1. Bytes that are not UTF-8 raise a DataError naming file and line; a BOM is dropped."""
    reader = csv.reader(io.StringIO(read_text(path)))  # splits lines on \n only; a \r before it is csv's
    records, start = [], 1
    try:
        for cells in reader:
            records.append((start, cells))
            start = reader.line_num + 1  # lines consumed so far, so the next record starts after them
    except csv.Error as e:
        raise DataError(f"{path}:{start}: unreadable CSV record ({e})") from e
    if not records:
        raise DataError(f"{path}: the file is empty (no header)")
    return [h.strip() for h in records[0][1]], records[1:]


class BadRecords:
    """Every bad record of one file, raised together in line order by `raise_if_any`. Bad label cells
    are counted in `skipped` instead when on_bad_label is "skip"; structural faults are always errors."""

    def __init__(self, path: Path, on_bad_label: str = "error"):
        if on_bad_label not in ("error", "skip"):
            raise ValueError(f"on_bad_label must be 'error' or 'skip', not {on_bad_label!r}")
        self.path, self.on_bad_label = path, on_bad_label
        self.errors: list[tuple[int, str]] = []  # (line, message naming file and line)
        self.label_errors = 0
        self.skipped: Counter = Counter()  # column -> bad label cells read as unlabelled

    def record(self, line: int, message: str) -> None:
        self.errors.append((line, f"{self.path}:{line}: {message}"))

    def bad_label(self, line: int, column: str, message: str) -> None:
        if self.on_bad_label == "skip":
            self.skipped[column] += 1
        else:
            self.label_errors += 1
            self.record(line, message)

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        listed = [message for _, message in sorted(self.errors, key=lambda error: error[0])][:MAX_LISTED]
        more = f"\n  and {len(self.errors) - len(listed)} more" if len(self.errors) > len(listed) else ""
        hint = (f"; --on-bad-label skip reads the {self.label_errors} bad label cell(s) as unlabelled"
                if self.label_errors else "")
        raise DataError(f"{self.path}: {len(self.errors)} bad record(s){hint}:\n  " + "\n  ".join(listed) + more)


def read_reviews(path: Path, text_column: str | None, bad: BadRecords):
    """Header, text column and (line, cells, text) of every well-formed record; blank lines are
    skipped, records with the wrong field count or no text go to `bad`."""
    header, records = read_records(path)
    lowered = [h.lower() for h in header]
    candidates = [text_column.lower()] if text_column else list(TEXT_COLUMNS)
    text_idx = next((lowered.index(name) for name in candidates if name in lowered), None)
    if text_idx is None:
        raise DataError(f"{path}:1: no text column; looked for {candidates} in header {header}; "
                        f"name the text column with --text-column")
    reviews = []
    for line, cells in records:
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(header):
            bad.record(line, f"{len(cells)} fields, header has {len(header)}")
            continue
        # Vietnamese text arrives both precomposed and decomposed (tone mark as a combining
        # character); NFC makes the two spell the same token.
        text = unicodedata.normalize("NFC", cells[text_idx]).strip()
        if text:
            reviews.append((line, cells, text))
        else:
            bad.record(line, f"empty review text in column {header[text_idx]!r}")
    return header, text_idx, reviews


def read_aspect_columns(path: str | Path, aspects: tuple[str, ...] | None = None,
                        text_column: str | None = None, on_bad_label: str = "error") -> ReviewSplit:
    """Format (a): one column per aspect. Without `aspects`, every non-text column is an aspect."""
    path, bad = Path(path), BadRecords(Path(path), on_bad_label)
    header, text_idx, reviews = read_reviews(path, text_column, bad)
    columns = {h: i for i, h in enumerate(header) if i != text_idx}
    aspects = tuple(columns) if aspects is None else aspects
    if not aspects:
        raise DataError(f"{path}:1: no aspect columns in header {header}; expected text plus one column per aspect")
    missing = [a for a in aspects if a not in columns]
    if missing:
        raise DataError(f"{path}:1: aspect column(s) {missing} not in header {header}")
    labels = torch.zeros(len(reviews), len(aspects), dtype=torch.long)  # ABSENT unless a cell says otherwise
    for row, (line, cells, _) in enumerate(reviews):
        for a, aspect in enumerate(aspects):
            value = cells[columns[aspect]]
            state = POLARITY_TO_STATE.get(value.strip().lower()) if value.strip() else ABSENT
            if state is None:  # unlabelled, kept as absent only under skip: otherwise the file raises below
                bad.bad_label(line, aspect, f"unknown polarity {value!r} in column {aspect!r}; "
                                            f"expected Positive, Negative, Neutral or empty")
            else:
                labels[row, a] = state
    bad.raise_if_any()
    return ReviewSplit([text for _, _, text in reviews], labels, tuple(aspects), str(path), dict(bad.skipped))


def parse_label_string(label: str, where: str) -> dict[str, str | None]:
    """`{SCREEN#Positive};{CAMERA#Negative};{OTHERS};` -> {'SCREEN': 'Positive', ...}.

    Anything besides `{...}` items and `;` separators is malformed and raises, naming `where`."""
    items = {}
    for match in LABEL_STRING.finditer(label):
        aspect, polarity = match.group(1).strip().upper(), match.group(2)
        if aspect in items:
            raise DataError(f"{where}: aspect {aspect} labelled twice in {label!r}")
        items[aspect] = polarity.strip() if polarity is not None else None
    if LABEL_STRING.sub("", label).replace(";", "").strip() or not items:  # text outside the {...} items
        raise DataError(f"{where}: malformed label string {label!r}; expected '{{ASPECT#Polarity}};...'")
    return items


def read_visfd(path: str | Path, aspects: tuple[str, ...] | None = None,
               text_column: str | None = None, on_bad_label: str = "error") -> tuple[ReviewSplit, int]:
    """Format (b): UIT-ViSFD label strings. Returns the split and how many `{OTHERS}` items had no
    polarity: those say the review talks about something outside the 10 aspects, without a sentiment,
    so they are no label here and are dropped (read as Neutral they invented ~1,700 Neutral labels in
    Train that the sentiment F1 scored). Without `aspects` the columns are the aspects seen with a
    polarity, UIT-ViSFD's 10 as its paper scores them; a review whose only item is `{OTHERS}` stays
    in, every aspect absent."""
    path, bad = Path(path), BadRecords(Path(path), on_bad_label)
    header, _, reviews = read_reviews(path, text_column, bad)
    lowered = [h.lower() for h in header]
    if "label" not in lowered:
        raise DataError(f"{path}:1: no 'label' column in header {header}")
    label_idx = lowered.index("label")
    parsed, others_without_polarity = [], 0  # parsed: (line, text, {aspect: polarity}) of the labelled items
    for line, cells, text in reviews:
        try:
            items = parse_label_string(cells[label_idx], f"{path}:{line}")
        except DataError as e:
            bad.errors.append((line, str(e)))
            continue
        for aspect in [a for a, polarity in items.items() if polarity is None]:
            del items[aspect]
            if aspect == "OTHERS":
                others_without_polarity += 1  # see the rule in the docstring
            else:
                bad.bad_label(line, aspect, f"aspect {aspect} has no polarity in column 'label' "
                                            f"('{{{aspect}#Positive}}', '#Negative' or '#Neutral')")
        parsed.append((line, text, items))
    if aspects is None:  # the aspects labelled in this file, in the dataset's own order first
        seen = {a for _, _, items in parsed for a in items}
        aspects = tuple([a for a in VISFD_ASPECTS if a in seen] + sorted(seen - set(VISFD_ASPECTS)))
    index = {a: i for i, a in enumerate(aspects)}
    labels = torch.zeros(len(parsed), len(aspects), dtype=torch.long)
    for row, (line, _, items) in enumerate(parsed):
        for aspect, polarity in items.items():
            state = POLARITY_TO_STATE.get(polarity.strip().lower())
            if aspect not in index:
                bad.record(line, f"unknown aspect {aspect!r} in column 'label'; known aspects: {list(aspects)}")
            elif state is None:  # unlabelled: stays absent
                bad.bad_label(line, aspect, f"unknown polarity {polarity!r} for aspect {aspect} in "
                                            f"column 'label'; expected Positive, Negative, Neutral")
            else:
                labels[row, index[aspect]] = state
    bad.raise_if_any()
    split = ReviewSplit([text for _, text, _ in parsed], labels, tuple(aspects), str(path), dict(bad.skipped))
    return split, others_without_polarity


def load_splits(root: str | Path, data_format: str = "auto", aspects: tuple[str, ...] | None = None,
                text_column: str | None = None, on_bad_label: str = "error") -> dict[str, ReviewSplit]:
    """train/val/test from `root` (file names: SPLIT_FILE_STEMS). The training file's aspects (or `aspects`)
    bind the other splits; the faults of every file are raised together, in one DataError. Prints what
    was read other than as written: skipped bad label cells and `{OTHERS}` items without polarity."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (--data-root)")
    splits, others_without_polarity, failed = {}, 0, []
    for split, stems in SPLIT_FILE_STEMS.items():
        # Every file is read even when an earlier one failed, so one error names the faults of all of them.
        found = sorted(f for f in root.iterdir() if f.suffix.lower() == ".csv" and f.stem.lower() in stems
                       and f.is_file())
        try:
            if not found:
                raise DataError(f"{root}: no {split} split; expected one of {[s + '.csv' for s in stems]} "
                                f"(any letter case)")
            if len(found) > 1:
                raise DataError(f"{root}: {len(found)} files for the {split} split, {[f.name for f in found]}; "
                                f"keep one")
            fmt = data_format
            if fmt == "auto":
                fmt = "visfd" if "label" in [h.lower() for h in read_records(found[0])[0]] else "columns"
            if fmt == "visfd":
                splits[split], count = read_visfd(found[0], aspects, text_column, on_bad_label)
                others_without_polarity += count
            else:
                splits[split] = read_aspect_columns(found[0], aspects, text_column, on_bad_label)
        except DataError as e:
            failed.append(str(e))
            continue
        aspects = splits[split].aspects  # fixed by the training split from here on
    if len(failed) == 1:
        raise DataError(failed[0])
    if failed:
        raise DataError(f"{root}: {len(failed)} of the 3 split files have faults:\n" + "\n".join(failed))
    if others_without_polarity:
        print(f"[data] {others_without_polarity} '{{OTHERS}}' items without polarity dropped (not a sentiment "
              f"label; OTHERS is not an aspect column unless some item gives it a polarity)")
    skipped = [f"{name} ({Path(s.source).name}): " + ", ".join(f"{col} {n}" for col, n in sorted(s.skipped.items()))
               for name, s in splits.items() if s.skipped]
    if skipped:
        total = sum(sum(s.skipped.values()) for s in splits.values())
        print(f"[data] --on-bad-label skip: {total} bad label cell(s) read as unlabelled: {'; '.join(skipped)}")
    return splits


# ----------------------------------------------------------------------------- tokenizers, dataset


class WordTokenizer:
    """The tiny encoder's tokenizer: lower-cased NFC word and punctuation tokens, id = position in `vocab`.
    Words not in `vocab` become `<unk>` (other texts meet words the training text lacks); past `max_len`
    ids a text is cut keeping `<s>` and `</s>`, as XLM-R's own tokenizer does."""

    SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # XLM-R's order, so position ids come out alike
    WORD = re.compile(r"\w+|[^\w\s]")
    MAX_SIZE = 30000  # vocabulary cap of `from_texts`, specials included

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        missing = [s for s in self.SPECIALS if s not in self.index]
        if missing:
            raise ValueError(f"WordTokenizer: the vocabulary lacks the special token(s) {missing}")
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = (self.index[s] for s in self.SPECIALS)

    @classmethod
    def from_texts(cls, texts: list[str]) -> WordTokenizer:
        """Specials first, then the words, most frequent first (ties by word: independent of hash order)."""
        counts = Counter(tok for text in texts for tok in cls.split(text))
        words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return cls(list(cls.SPECIALS) + words[: cls.MAX_SIZE - len(cls.SPECIALS)])

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
            raise DataError("--encoder needs the `transformers` and `sentencepiece` packages: "
                            "pip install transformers sentencepiece") from e
        try:
            self.tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:  # a folder without a tokenizer, a name that is not a model
            raise DataError(f"--encoder {name}: {str(e).strip().splitlines()[0]}") from None
        self.pad_id = self.tok.pad_token_id

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str, max_len: int) -> list[int]:
        return self.tok(text, truncation=True, max_length=max_len)["input_ids"]


def build_tokenizer(encoder: str | None, vocab: list[str] | None = None, texts: list[str] = ()):
    """The pretrained encoder's own tokenizer, or the word tokenizer: its vocabulary `vocab` as a
    checkpoint saved it (a list of str), else built from the training `texts`."""
    if encoder:
        return HFTokenizer(encoder)
    return WordTokenizer(vocab) if vocab is not None else WordTokenizer.from_texts(texts)


def encode_reviews(split: ReviewSplit, tokenizer, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(token ids, labels) per review, a dataset for the loaders: ids computed once, padded per batch
    in `collate` (to the longest review)."""
    return [(torch.tensor(tokenizer.encode(text, max_len), dtype=torch.long), labels)
            for text, labels in zip(split.texts, split.labels)]


def make_collate(pad_id: int):
    def collate(batch):
        ids = torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True, padding_value=pad_id)
        return {"input_ids": ids,  # (B, T) padded at the end
                "attention_mask": ids.ne(pad_id),  # (B, T) True = real token
                "labels": torch.stack([b[1] for b in batch])}  # (B, A)
    return collate


def eval_loader(dataset: list, pad_id: int, batch_size: int = EVAL_BATCH, workers: int = 0, seed: int = 0,
                rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """In order, sharded over processes without dropping a review (the evaluation gathers the shards)."""
    sampler = EpochSampler(len(dataset), batch_size, shuffle=False, rank=rank, world_size=world_size,
                           drop_last=False)
    return make_loader(dataset, sampler, workers, seed, collate_fn=make_collate(pad_id))


# ----------------------------------------------------------------------------- synthetic reviews

SYN_ASPECTS = VISFD_ASPECTS[:-1]  # UIT-ViSFD's 10 aspects, OTHERS left out
# Per aspect: the words that name it, then its positive and its negative opinion words (indexed by
# state). Most clauses use a word tied to its aspect ("pin trâu", "giá chát"), as Vietnamese reviews
# do; the rest use generic words ("tốt", "tệ") whose aspect only word order tells.
ASPECT_LEXICON = {
    "BATTERY": (("pin", "thời lượng pin", "sạc"), ("trâu", "bền bỉ"), ("hao", "chai")),
    "CAMERA": (("camera", "chụp ảnh", "quay phim"), ("nét", "sống động"), ("mờ", "nhòe")),
    "DESIGN": (("thiết kế", "kiểu dáng", "màu sắc"), ("sang trọng", "thời trang"), ("thô kệch", "quê mùa")),
    "FEATURES": (("vân tay", "face id", "loa"), ("nhạy bén", "tiện lợi"), ("chập chờn", "rè")),
    "GENERAL": (("máy", "điện thoại", "sản phẩm"), ("đáng tiền", "hài lòng"), ("hối hận", "thất vọng")),
    "PERFORMANCE": (("hiệu năng", "chơi game", "cấu hình"), ("mượt", "mạnh mẽ"), ("giật", "lag")),
    "PRICE": (("giá", "giá tiền", "giá cả"), ("rẻ", "hợp lý"), ("đắt", "chát")),
    "SCREEN": (("màn hình", "độ sáng màn", "cảm ứng"), ("rực rỡ", "sáng"), ("ám vàng", "tối")),
    "SER&ACC": (("nhân viên", "shop", "phụ kiện"), ("nhiệt tình", "chu đáo"), ("cọc cằn", "thờ ơ")),
    "STORAGE": (("bộ nhớ", "dung lượng", "thẻ nhớ"), ("dư dả", "rộng rãi"), ("chật chội", "đầy")),
}
SENTIMENT_WORDS = {POSITIVE: ("tốt", "tuyệt vời", "xịn"), NEGATIVE: ("tệ", "kém", "dở"),
                   NEUTRAL: ("bình thường", "tạm được", "tạm ổn", "trung bình")}
INTENSIFIERS = ("", "", "rất", "khá", "hơi", "quá")
CONNECTIVES = (", ", " và ", " nhưng ", ". ", " mà ")
FILLERS = ("mình mới mua", "dùng được một tuần", "nói chung là", "mua cho mẹ", "nhận xét sau hai tháng")


def synthetic_split(n: int, seed: int) -> ReviewSplit:
    """Vietnamese-like reviews: 1-3 aspects each (most aspects absent), an opinion word per aspect
    (aspect-specific 70% of the time), aspects that often share the review's mood, and negation
    ("không" + opinion flips it), so a clause's polarity cannot be read off one word alone."""
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
                word = ASPECT_LEXICON[SYN_ASPECTS[a]][said][rng.integers(2)]
            else:
                word = SENTIMENT_WORDS[said][rng.integers(len(SENTIMENT_WORDS[said]))]
            intensifier = "" if negate else INTENSIFIERS[rng.integers(len(INTENSIFIERS))]
            parts = [ASPECT_LEXICON[SYN_ASPECTS[a]][0][rng.integers(3)], "không" if negate else intensifier, word]
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
