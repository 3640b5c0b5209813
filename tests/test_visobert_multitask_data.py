"""visobert_multitask data: both label formats, their errors, NFC, tokenizer, synthetic reviews."""

import unicodedata

import pytest
import torch

from common.runtime import DataError
from visobert_multitask.data import (
    ABSENT,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    WordTokenizer,
    encode_reviews,
    load_splits,
    make_collate,
    parse_label_string,
    read_aspect_columns,
    read_visfd,
    synthetic_split,
)


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_columns_format_reads_states_and_aspects_from_header(tmp_path):
    f = write(tmp_path / "train.csv",
              "text,Battery,Camera\npin tốt,Positive,\ncamera kém,,negative\nổn,Neutral,Positive\n")
    split = read_aspect_columns(f)
    assert split.aspects == ("Battery", "Camera")
    assert split.labels.tolist() == [[POSITIVE, ABSENT], [ABSENT, NEGATIVE], [NEUTRAL, POSITIVE]]


@pytest.mark.parametrize("body, message", [
    ("text,Battery\npin tốt,Great\n", "train.csv:2: unknown polarity 'Great'"),
    ("text,Battery\n  ,Positive\n", "train.csv:2: empty review text"),
    ("text,Battery\npin,Positive,extra\n", "train.csv:2: 3 fields"),
])
def test_columns_format_errors_name_the_row(tmp_path, body, message):
    with pytest.raises(DataError, match=message):
        read_aspect_columns(write(tmp_path / "train.csv", body))


def test_visfd_label_strings():
    assert parse_label_string("{SCREEN#Positive};{CAMERA#Negative};{OTHERS};", "x") == {
        "SCREEN": "Positive", "CAMERA": "Negative", "OTHERS": None}
    for bad in ("SCREEN#Positive", "{SCREEN#Positive};junk", "", "{SCREEN#Positive};{SCREEN#Negative}"):
        with pytest.raises(DataError, match="x:"):
            parse_label_string(bad, "x")


def test_visfd_reader_unknown_aspect_polarity_and_others(tmp_path):
    f = write(tmp_path / "Train.csv", "index,comment,n_star,label\n"
                                      '0,"Pin tốt, màn đẹp",5,{BATTERY#Positive};{SCREEN#Positive};\n'
                                      "1,Máy lỗi,1,{GENERAL#Negative};{OTHERS};\n")
    split, no_polarity = read_visfd(f)
    assert split.aspects == ("BATTERY", "GENERAL", "SCREEN")  # dataset order; {OTHERS} without polarity is no label
    assert split.labels.tolist() == [[POSITIVE, ABSENT, POSITIVE], [ABSENT, NEGATIVE, ABSENT]]
    assert no_polarity == 1
    with pytest.raises(DataError, match=r"Train.csv:3: unknown aspect 'GENERAL'"):
        read_visfd(f, aspects=("BATTERY", "SCREEN", "OTHERS"))
    bad = write(tmp_path / "b.csv", "comment,label\npin,{BATTERY#Good};\n")
    with pytest.raises(DataError, match="b.csv:2: unknown polarity 'Good'"):
        read_visfd(bad)
    bad = write(tmp_path / "c.csv", "comment,label\npin,{BATTERY};\n")
    with pytest.raises(DataError, match="c.csv:2: aspect BATTERY has no polarity"):
        read_visfd(bad)


def test_non_utf8_file_names_file_and_line(tmp_path):
    f = tmp_path / "train.csv"
    f.write_bytes("text,Battery\npin tốt,Positive\n".encode() + b"pin t\xea\xf2,Negative\n")  # a legacy 8-bit code page
    with pytest.raises(DataError, match=r"train.csv:3: not valid UTF-8"):
        read_aspect_columns(f)


def test_text_is_nfc_normalised_and_tokenizer_sees_one_spelling(tmp_path):
    decomposed = unicodedata.normalize("NFD", "màn hình tốt")
    assert decomposed != "màn hình tốt"
    f = write(tmp_path / "train.csv", f"text,Screen\n{decomposed},Positive\nmàn hình tốt,Positive\n")
    split = read_aspect_columns(f)
    assert split.texts[0] == split.texts[1] == "màn hình tốt"
    tok = WordTokenizer.from_texts(split.texts)
    assert tok.encode(decomposed, 16) == tok.encode("màn hình tốt", 16)


def test_load_splits_fixes_aspects_from_train_and_accepts_dev_name(tmp_path):
    write(tmp_path / "train.csv", "text,A,B\nx,Positive,\n")
    write(tmp_path / "dev.csv", "text,A,B\ny,,Negative\n")
    write(tmp_path / "test.csv", "text,B,A\nz,Neutral,\n")  # other column order is fine
    splits = load_splits(tmp_path)
    assert splits["test"].labels.tolist() == [[ABSENT, NEUTRAL]]
    write(tmp_path / "test.csv", "text,A\nz,Neutral\n")
    with pytest.raises(DataError, match=r"test.csv:1: aspect column\(s\) \['B'\]"):
        load_splits(tmp_path)


def test_tokenizer_specials_truncation_and_collate_padding():
    tok = WordTokenizer.from_texts(["pin tốt", "pin tệ quá"])
    ids = tok.encode("pin tốt lạ", 16)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.unk_id in ids
    assert len(tok.encode("pin " * 50, 8)) == 8
    split = synthetic_split(5, seed=0)
    ds = encode_reviews(split, WordTokenizer.from_texts(split.texts), max_len=32)
    batch = make_collate(tok.pad_id)([ds[i] for i in range(5)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert (batch["input_ids"][~batch["attention_mask"]] == tok.pad_id).all()
    assert batch["labels"].shape == (5, 10)


def test_synthetic_reviews_have_several_aspects_and_mostly_absent_slots():
    split = synthetic_split(400, seed=1)
    present = split.labels != ABSENT
    assert present.any(dim=1).all() and (present.sum(dim=1) > 1).float().mean() > 0.3
    assert present.float().mean() < 0.3  # most aspects are absent from most reviews
    assert set(split.labels.unique().tolist()) == {ABSENT, POSITIVE, NEGATIVE, NEUTRAL}
    assert any("không" in t for t in split.texts)
    again = synthetic_split(400, seed=1)
    assert again.texts == split.texts and torch.equal(again.labels, split.labels)  # deterministic in the seed
