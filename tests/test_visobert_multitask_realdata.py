"""visobert_multitask on the originals' files as published: hjsad1994/BERT's `*_multilabel.csv`
(BOM, `data` column, misspelt polarities, reviews with line breaks) and UIT-ViSFD's Train/Dev/Test.csv
(CRLF, `{ASPECT#Polarity}` strings, `{OTHERS}` without polarity). The fixtures are written here in
those exact layouts; no real data is read."""

import csv
import io
import json

import pytest

from common.runtime import DataError
from visobert_multitask.data import (
    ABSENT,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    load_splits,
    read_aspect_columns,
    read_visfd,
)
from visobert_multitask.train import main

HJSAD_HEADER = ["data", "Battery", "Camera", "Performance", "Display", "Design", "Packaging", "Price", "Shop_Service",
                "Shipping", "General", "Others"]
VISFD_HEADER = ["index", "comment", "n_star", "date_time", "label"]
TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--intermediate", "64", "--batch-size", "4",
        "--log-interval", "1", "--device", "cpu", "--epochs", "1", "--max-iters", "1"]


def csv_text(header: list[str], rows: list[list[str]], newline: str = "\n") -> tuple[str, list[int]]:
    """The CSV text (csv.writer quoting, as pandas writes these files) and the physical line where
    each data row starts, counted independently of the reader under test."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    starts = []
    for row in rows:
        starts.append(out.getvalue().count("\n") + 1)
        writer.writerow(row)
    return out.getvalue(), starts


def hjsad_row(text: str, **cells: str) -> list[str]:
    return [text] + [cells.get(a, "") for a in HJSAD_HEADER[1:]]


def write_bom(path, text: str):
    path.write_bytes(text.encode("utf-8-sig"))  # hjsad1994's files start with a UTF-8 BOM
    return path


# Reviews as the seed's data has them: several with line breaks inside the quoted text, then cells
# misspelt in two ways. Record numbers and physical lines drift apart from the first such review on.
HJSAD_TRAIN = [
    hjsad_row("Pin trâu, máy mượt", Battery="Positive", Performance="Positive"),
    hjsad_row("Nhóm màu: Đen\nDung lượng: 128gb\nGiao hàng nhanh", Shipping="Positive"),
    hjsad_row("Máy đẹp ok", Design="Positive"),
    hjsad_row("Tính năng nổi bật: Tốt\nChất lượng: Tốt\nĐúng mô tả", General="Positive"),
    hjsad_row("Pin ổn trong tầm giá", Battery="Postive", Price="Neutral"),  # misspelt
    hjsad_row("Camera mờ\nship chậm", Camera="Negative", Shipping="Negative"),
    hjsad_row("Giá rẻ, đóng gói kỹ", Price="Posititve", Packaging="Positive"),  # misspelt
    hjsad_row("Pin tụt nhanh", Battery="Negatve"),  # misspelt
]


def write_hjsad_folder(root, train_rows=HJSAD_TRAIN):
    root.mkdir(exist_ok=True)
    text, starts = csv_text(HJSAD_HEADER, train_rows)
    write_bom(root / "train_multilabel.csv", text)
    write_bom(root / "validation_multilabel.csv", csv_text(HJSAD_HEADER, [
        hjsad_row("Màn hình đẹp\nloa to", Display="Positive"),
        hjsad_row("Shop tư vấn nhiệt tình", Shop_Service="Positive"),
        hjsad_row("Máy lag", Performance="Negative"), hjsad_row("Pin bình thường", Battery="Neutral")])[0])
    write_bom(root / "test_multilabel.csv", csv_text(HJSAD_HEADER, [
        hjsad_row("Camera nét", Camera="Positive"), hjsad_row("Giao hàng\nchậm", Shipping="Negative"),
        hjsad_row("Pin trâu", Battery="Positive"), hjsad_row("Máy nóng", Performance="Negative")])[0])
    return starts


def test_hjsad1994_files_read_as_published(tmp_path):
    """Its file names, BOM and `data` column, with no renaming and no --text-column."""
    rows = [r for r in HJSAD_TRAIN if not any(v in r for v in ("Postive", "Posititve", "Negatve"))]
    write_hjsad_folder(tmp_path / "data", rows)
    splits = load_splits(tmp_path / "data")
    assert splits["train"].source.endswith("train_multilabel.csv")
    assert splits["val"].source.endswith("validation_multilabel.csv")
    assert splits["train"].aspects == tuple(HJSAD_HEADER[1:])  # 11 aspects, Others included
    assert splits["train"].texts[1] == "Nhóm màu: Đen\nDung lượng: 128gb\nGiao hàng nhanh"  # the line breaks kept
    assert splits["train"].labels[0].tolist()[:3] == [POSITIVE, ABSENT, POSITIVE]
    assert splits["test"].labels[1, HJSAD_HEADER.index("Shipping") - 1] == NEGATIVE


def test_every_bad_cell_of_a_file_in_one_error_with_physical_line_column_and_value(tmp_path):
    starts = write_hjsad_folder(tmp_path / "data")
    path = tmp_path / "data" / "train_multilabel.csv"
    with pytest.raises(DataError) as error:
        read_aspect_columns(path)
    message = str(error.value)
    assert "3 bad record(s)" in message and "--on-bad-label skip" in message
    # Record 5 (the first misspelt one) starts on line 10: the three reviews before it hold 4 line breaks.
    assert starts[4] == 10
    for row, value, column in ((4, "Postive", "Battery"), (6, "Posititve", "Price"), (7, "Negatve", "Battery")):
        assert f"train_multilabel.csv:{starts[row]}: unknown polarity '{value}' in column '{column}'" in message


def test_structural_faults_listed_with_the_bad_labels_and_the_list_capped(tmp_path):
    rows = [hjsad_row(f"Máy số {i}", Battery="Tốt") for i in range(30)]  # 30 bad cells
    rows.insert(3, hjsad_row("   ", Battery="Positive"))  # empty review
    rows.insert(5, ["Máy thiếu cột", "Positive"])  # 2 fields for 12
    text, starts = csv_text(HJSAD_HEADER, rows)
    path = write_bom(tmp_path / "train_multilabel.csv", text)
    with pytest.raises(DataError) as error:
        read_aspect_columns(path, on_bad_label="skip")  # skip is for label cells only
    message = str(error.value)
    assert message.startswith(f"{path}: 2 bad record(s):")
    assert f"train_multilabel.csv:{starts[3]}: empty review text in column 'data'" in message
    assert f"train_multilabel.csv:{starts[5]}: 2 fields, header has 12" in message
    with pytest.raises(DataError) as error:
        read_aspect_columns(path)
    message = str(error.value)
    assert "32 bad record(s)" in message and message.endswith("and 12 more")
    assert len(message.splitlines()) == 1 + 20 + 1  # summary, 20 records, "and 12 more"


def test_skip_reads_bad_cells_as_unlabelled_and_counts_them_per_column(tmp_path, capsys):
    write_hjsad_folder(tmp_path / "data")
    splits = load_splits(tmp_path / "data", on_bad_label="skip")
    train = splits["train"]
    assert train.skipped == {"Battery": 2, "Price": 1}
    battery, price = HJSAD_HEADER.index("Battery") - 1, HJSAD_HEADER.index("Price") - 1
    assert train.labels[4, battery] == ABSENT and train.labels[4, price] == NEUTRAL  # the good cell stays
    assert train.labels[6, price] == ABSENT and train.labels[7, battery] == ABSENT
    assert len(train.texts) == len(HJSAD_TRAIN)  # no review dropped
    out = capsys.readouterr().out
    assert "3 bad label cell(s) read as unlabelled" in out and "Battery 2, Price 1" in out


def test_train_on_the_published_hjsad1994_folder_with_on_bad_label(tmp_path):
    write_hjsad_folder(tmp_path / "data")
    with pytest.raises(DataError, match=r"(?s)3 bad record\(s\).*unknown polarity 'Posititve'"):
        main(TINY + ["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    results = main(TINY + ["--data-root", str(tmp_path / "data"), "--on-bad-label", "skip",
                           "--out", str(tmp_path / "run")])
    assert results["bad_labels_skipped"] == {"train": {"Battery": 2, "Price": 1}}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["bad_labels_skipped"] == results["bad_labels_skipped"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["on_bad_label"] == "skip"


def test_bad_records_of_every_file_named_in_one_error(tmp_path):
    """the faults of train AND test are reported by one run, each file with its own list;
    before, only the first failing file was named and the others' faults came on later runs."""
    write_hjsad_folder(tmp_path / "data")
    test_rows = [hjsad_row("Camera nét", Camera="Positve"), hjsad_row("Giao hàng\nchậm", Shipping="Negative"),
                 hjsad_row("   ", Battery="Positive")]
    text, test_starts = csv_text(HJSAD_HEADER, test_rows)
    write_bom(tmp_path / "data" / "test_multilabel.csv", text)
    with pytest.raises(DataError) as error:
        main(TINY + ["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "refused")])
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'data'}: 2 of the 3 split files have faults:")
    assert "train_multilabel.csv: 3 bad record(s)" in message and "unknown polarity 'Negatve'" in message
    assert "test_multilabel.csv: 2 bad record(s)" in message
    assert f"test_multilabel.csv:{test_starts[0]}: unknown polarity 'Positve' in column 'Camera'" in message
    assert f"test_multilabel.csv:{test_starts[2]}: empty review text in column 'data'" in message
    assert "validation_multilabel.csv" not in message  # the good file is not listed
    # A missing file is named beside the bad records of another.
    (tmp_path / "data" / "validation_multilabel.csv").unlink()
    with pytest.raises(DataError, match=r"(?s)3 of the 3 split files.*no val split.*test_multilabel\.csv: 2 bad"):
        load_splits(tmp_path / "data")


def test_text_column_not_found_lists_the_header_and_the_flag(tmp_path):
    path = write_bom(tmp_path / "train.csv", "noi_dung,Battery\npin tốt,Positive\n")
    with pytest.raises(DataError, match=r"no text column.*\['noi_dung', 'Battery'\].*--text-column"):
        read_aspect_columns(path)
    assert read_aspect_columns(path, text_column="noi_dung").texts == ["pin tốt"]


def test_two_files_for_one_split_is_an_error_not_a_silent_choice(tmp_path):
    write_hjsad_folder(tmp_path / "data")
    (tmp_path / "data" / "train.csv").write_text("text,Battery\npin tốt,Positive\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"2 files for the train split.*train\.csv.*train_multilabel\.csv"):
        load_splits(tmp_path / "data")


# ----------------------------------------------------------------------------- UIT-ViSFD


def visfd_rows(rows: list[tuple[str, str]]) -> list[list[str]]:
    return [[str(i), comment, "5", "2 tuần trước", label] for i, (comment, label) in enumerate(rows)]


def write_visfd_folder(root, train: list[tuple[str, str]]):
    """Train/Dev/Test.csv as UIT-ViSFD publishes them: CRLF line ends, no BOM."""
    root.mkdir(exist_ok=True)
    text, starts = csv_text(VISFD_HEADER, visfd_rows(train), "\r\n")
    (root / "Train.csv").write_bytes(text.encode())
    others = [("Pin trâu, camera đẹp", "{BATTERY#Positive};{CAMERA#Positive};"),
              ("Máy nóng\r\nhay sập nguồn", "{PERFORMANCE#Negative};{OTHERS};")]
    for name in ("Dev.csv", "Test.csv"):
        (root / name).write_bytes(csv_text(VISFD_HEADER, visfd_rows(others), "\r\n")[0].encode())
    return starts


VISFD_TRAIN = [
    ("Mới mua máy, pin trâu, chụp ảnh đẹp", "{BATTERY#Positive};{CAMERA#Positive};"),
    ("Pin kém còn lại miễn chê, mua 8/3 tình trạng pin 88%", "{BATTERY#Negative};{GENERAL#Positive};{OTHERS};"),
    ("Mọi người cập nhật phần mềm lại,\r\nnó sẽ bớt tốn pin", "{OTHERS};"),
    ("Giá hơi cao, chơi game lag", "{PRICE#Neutral};{PERFORMANCE#Negative};"),
]


def test_visfd_others_without_polarity_is_no_sentiment_label(tmp_path, capsys):
    """`{OTHERS}` carries no sentiment: it must not become a Neutral label (or an aspect column)
    that the sentiment F1 would then score."""
    write_visfd_folder(tmp_path / "visfd", VISFD_TRAIN)
    splits = load_splits(tmp_path / "visfd")
    train = splits["train"]
    assert train.aspects == ("BATTERY", "CAMERA", "GENERAL", "PERFORMANCE", "PRICE")  # no OTHERS column
    assert train.labels.tolist() == [[POSITIVE, POSITIVE, ABSENT, ABSENT, ABSENT],
                                     [NEGATIVE, ABSENT, POSITIVE, ABSENT, ABSENT],
                                     [ABSENT, ABSENT, ABSENT, ABSENT, ABSENT],
                                     [ABSENT, ABSENT, ABSENT, NEGATIVE, NEUTRAL]]
    assert train.texts[2] == "Mọi người cập nhật phần mềm lại,\r\nnó sẽ bớt tốn pin"  # the review stays
    assert (train.labels == NEUTRAL).sum() == 1  # only the labelled {PRICE#Neutral}
    assert "4 '{OTHERS}' items without polarity dropped" in capsys.readouterr().out  # 2 in Train, 1 each in Dev, Test
    split, others = read_visfd(tmp_path / "visfd" / "Dev.csv", aspects=("BATTERY", "CAMERA", "PERFORMANCE", "OTHERS"))
    assert others == 1 and split.labels[:, 3].tolist() == [ABSENT, ABSENT]


def test_visfd_bad_polarities_all_reported_on_physical_lines_or_skipped(tmp_path):
    train = VISFD_TRAIN + [("Màn hình\r\nđẹp, pin tệ", "{SCREEN#Postive};{BATTERY#Negative};"),
                           ("Camera\r\nổn", "{CAMERA#Posititve};"), ("Máy ổn", "{GENERAL};")]
    starts = write_visfd_folder(tmp_path / "visfd", train)
    path = tmp_path / "visfd" / "Train.csv"
    with pytest.raises(DataError) as error:
        read_visfd(path)
    message = str(error.value)
    assert "3 bad record(s)" in message
    assert starts[4] == 7 and starts[5] == 9  # two reviews above hold a line break each
    assert f"Train.csv:{starts[4]}: unknown polarity 'Postive' for aspect SCREEN in column 'label'" in message
    assert f"Train.csv:{starts[5]}: unknown polarity 'Posititve' for aspect CAMERA in column 'label'" in message
    assert f"Train.csv:{starts[6]}: aspect GENERAL has no polarity" in message
    split, _ = read_visfd(path, on_bad_label="skip")
    assert split.skipped == {"SCREEN": 1, "CAMERA": 1, "GENERAL": 1}
    row = dict(zip(split.aspects, split.labels[4].tolist()))
    assert row["BATTERY"] == NEGATIVE and row["SCREEN"] == ABSENT  # the good item kept, the bad one unlabelled
