"""Write this project's index.csv from the DataFrames of polimi-ispl/icpr2020dfdc.

    python deepfake_effnet_lstm/import_icpr2020dfdc.py data/dfdc_videos.pkl --faces-df data/dfdc_faces.pkl \\
        --out faces/dfdc/index.csv
    python deepfake_effnet_lstm/train.py --data-root faces/dfdc --frames 16 --image-size 224 --pretrained

What icpr2020dfdc writes (its index_dfdc.py, index_ffpp.py, extract_faces.py):
- the videos DataFrame (`--videodataset`, a pandas pickle): one row per video; index = the video's
  key (DFDC: the file name, FF++: the row number); `label` bool, True = fake; `original` = the KEY of
  the video a fake was made from (DFDC: NaN for reals, FF++: -1); `path` relative to the dataset root
  (`dfdc_train_part_N/x.mp4`); DFDC only: `folder` = N, the part of the Kaggle training set;
- the face crops `<faces folder>/<path>/fr{frame:03d}_subj{subject}.jpg`, and the faces DataFrame
  (`--facesdf`) indexed by those relative paths.

What is written: `video` = `path` (the folder of its crops under the faces folder, which is the
--data-root), `label` real/fake, `original` = the `path` of the source video, and `split` from
`folder` with icpr2020dfdc's `dfdc-35-5-10` split (isplutils/split.py: parts 0-34 train, 35-39 val,
40-49 test; --val-folders / --test-folders change it). Without a `folder` column (FF++) no split
column is written and train.py splits by original (--val-fraction / --test-fraction); icpr2020dfdc's
FF++ split (720/140/140 originals) is by original too. A folder holding crops of several people is
read as one sequence per person by data.py (frNNN_subjS), so the index keeps one row per video.

pandas is needed for a pickle only; without it, export the DataFrames to CSV where pandas runs
(`pd.read_pickle('videos.pkl').to_csv('videos.csv')`, index included) and pass the CSV files.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project, when run as a script

import argparse
import csv
import io
import math
import re

from common.runtime import DataError, read_text
from deepfake_effnet_lstm.data import subject_of

COLUMNS = ("label", "original", "path")  # the videos DataFrame's columns this import needs (+ `folder` for a split)
LABELS = {"true": "fake", "1": "fake", "fake": "fake", "false": "real", "0": "real", "real": "real"}
PICKLE_MAGIC = b"\x80"  # every pickle protocol >= 2 starts with the PROTO opcode


# ----------------------------------------------------------------------------- reading the DataFrames


def text_of(value) -> str:
    """A cell as text, the same whether it came from a pickle or from the CSV export: NaN / None -> '',
    2.0 -> '2' (an integer column with a NaN becomes float in pandas), numpy scalars as Python ones,
    Windows separators as '/'."""
    value = value.item() if hasattr(value, "item") else value  # numpy scalar -> Python
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip().replace("\\", "/")
    if re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
    return "" if text.lower() == "nan" else text


def read_frame(path: Path, what: str) -> tuple[list[str], list[dict], list[str]]:
    """A DataFrame as (keys = its index, rows = {column: text}, where = 'file:line' or 'file[key]')."""
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    with open(path, "rb") as f:
        is_pickle = f.read(1) == PICKLE_MAGIC
    if is_pickle:
        try:
            import pandas as pd
        except ImportError:
            raise DataError(f"{path}: a pickled DataFrame; reading it needs pandas (`pip install pandas`), or "
                            f"export it to CSV where pandas runs: "
                            f"pd.read_pickle('{path.name}').to_csv('{path.stem}.csv')") from None
        frame = pd.read_pickle(path)
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"{path}: holds a {type(frame).__name__}, not icpr2020dfdc's {what} DataFrame")
        keys = [text_of(k) for k in frame.index]
        rows = [{column: text_of(v) for column, v in row.items()} for row in frame.to_dict("records")]
        return keys, rows, [f"{path}[{k!r}]" for k in keys]
    with io.StringIO(read_text(path), newline="") as f:
        table = list(csv.reader(f))
    if not table:
        raise DataError(f"{path}: empty file")
    header, body = [h.strip() for h in table[0]], table[1:]
    # DataFrame.to_csv writes the index first, under its name ('' for icpr2020dfdc's unnamed indexes)
    if header[0] in COLUMNS or header[0] == "folder":
        raise DataError(f"{path}:1: header {header} has no index column: the {what}' keys are in the DataFrame's "
                        f"index; export with the index (df.to_csv(path), the default)")
    rows, keys, where = [], [], []
    for line, cells in enumerate(body, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise DataError(f"{path}:{line}: {len(cells)} cells for the {len(header)} columns of the header")
        keys.append(text_of(cells[0]))
        rows.append({h: text_of(c) for h, c in zip(header[1:], cells[1:])})
        where.append(f"{path}:{line}")
    return keys, rows, where


def parse_folders(text: str) -> set[int]:
    """'35-39' or '35,36,40-49' -> the set of part numbers."""
    folders = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise argparse.ArgumentTypeError(f"{text!r}: give part numbers and ranges, e.g. 35-39 or 35,36,40-49")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        folders |= set(range(low, high + 1))
    return folders


# ----------------------------------------------------------------------------- the import


def import_index(videos_path: Path, faces_path: Path | None, val_folders: set[int], test_folders: set[int],
                 split: bool = True) -> tuple[list[dict], list[str]]:
    """The rows of this project's index (video, label, [split,] original) and lines to print."""
    keys, rows, where = read_frame(videos_path, "videos")
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing or not rows:
        raise DataError(f"{videos_path}: no videos, or no column {missing} (icpr2020dfdc's videos DataFrame has "
                        f"label, original, path[, folder])")
    path_of, notes = {}, []
    for key, row, at in zip(keys, rows, where):
        if key in path_of:
            raise DataError(f"{at}: video key {key!r} listed twice")
        if not row["path"]:
            raise DataError(f"{at}: empty path")
        path_of[key] = row["path"]

    index, bad_labels, unknown = [], [], []
    for row, at in zip(rows, where):
        label = LABELS.get(row["label"].lower())
        if label is None:
            bad_labels.append(f"  {at}: label {row['label']!r}")
        original = row["original"]
        if original == "-1" and "-1" not in path_of:  # index_ffpp.py writes -1 for "no original"
            original = ""
        if original and original not in path_of:
            unknown.append(f"  {at}: original {original!r}")
        index.append({"video": row["path"], "label": label, "original": path_of.get(original, ""),
                      "folder": row.get("folder", ""), "where": at})
    if bad_labels:
        raise DataError(f"{videos_path}: {len(bad_labels)} label(s) not True/False (or 1/0):\n" + "\n".join(bad_labels))
    if unknown:
        raise DataError(f"{videos_path}: {len(unknown)} `original` value(s) name no video of the DataFrame (a fake "
                        f"must name the index key of its source, so both stay in one split):\n" + "\n".join(unknown))
    if len(set(path_of.values())) != len(path_of):
        raise DataError(f"{videos_path}: two videos share one path; the crops of both would land in one folder")

    if faces_path is not None:
        index, faces_notes = keep_videos_with_faces(index, faces_path)
        notes += faces_notes

    has_folder = split and all(r["folder"] for r in index)
    if split and not has_folder:
        notes.append("no `folder` column (or empty cells): no split column written; train.py splits by original")
    for r in index:
        if has_folder:
            match = re.search(r"(\d+)$", r["folder"])  # icpr2020dfdc stores N; accept dfdc_train_part_N as well
            if not match:
                raise DataError(f"{r['where']}: folder {r['folder']!r} is not a DFDC part number")
            part = int(match.group(1))
            r["split"] = "test" if part in test_folders else "val" if part in val_folders else "train"
        r.pop("folder"), r.pop("where")
    if has_folder:  # a fake in another part than its source would leak its identity across splits
        split_of = {r["video"]: r["split"] for r in index}
        crossing = [f"  {r['video']} ({r['split']}) made from {r['original']} ({split_of[r['original']]})"
                    for r in index if r["original"] and split_of[r["original"]] != r["split"]]
        if crossing:
            raise DataError(f"{videos_path}: {len(crossing)} fake(s) fall in another split than their original; "
                            f"put their folders in the same split:\n" + "\n".join(crossing))
    return index, notes


def keep_videos_with_faces(index: list[dict], faces_path: Path) -> tuple[list[dict], list[str]]:
    """Leave out the videos extract_faces.py found no face in (it writes no folder for them), and the fakes
    of a left-out original: their `original` would name no video of the index."""
    face_paths, _, _ = read_frame(faces_path, "faces")
    if face_paths and not any(subject_of(p) is not None for p in face_paths[:100]):
        raise DataError(f"{faces_path}: index {face_paths[0]!r}... is not extract_faces.py's crop paths "
                        f"(<path>/frNNN_subjS.jpg); export with the index (df.to_csv(path), the default)")
    subjects: dict[str, set] = {}
    for face_path in face_paths:  # '<path>/frNNN_subjS.jpg'
        video, _, name = face_path.rpartition("/")
        subjects.setdefault(video, set()).add(subject_of(name))
    kept = [r for r in index if r["video"] in subjects]
    kept_names = {r["video"] for r in kept}
    orphans = [r for r in kept if r["original"] and r["original"] not in kept_names]
    kept = [r for r in kept if not (r["original"] and r["original"] not in kept_names)]
    notes = []
    if len(kept) + len(orphans) < len(index):
        notes.append(f"{len(index) - len(kept) - len(orphans)} video(s) without face crops in {faces_path} left out")
    if orphans:
        notes.append(f"{len(orphans)} fake(s) whose original has no face crops left out")
    several = sum(len(subjects[r["video"]]) > 1 for r in kept)
    if several:
        notes.append(f"{several} video(s) hold crops of several people: read as one sequence per person")
    return kept, notes


def write_index(path: Path, index: list[dict]) -> None:
    columns = ["video", "label"] + (["split"] if index and "split" in index[0] else []) + ["original"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text.getvalue())
    temporary.replace(path)  # a kill while writing never leaves half an index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("videos", type=Path, help="icpr2020dfdc's videos DataFrame: a pickle (needs pandas) or its "
                        "CSV export (DataFrame.to_csv, index included)")
    parser.add_argument("--faces-df", type=Path, default=None, help="its faces DataFrame (pickle or CSV): videos "
                        "without face crops are left out (default: every video is listed)")
    parser.add_argument("--out", type=Path, required=True, help="the index to write, <faces folder>/index.csv "
                        "for train.py --data-root <faces folder>")
    parser.add_argument("--val-folders", type=parse_folders, default=parse_folders("35-39"),
                        help="DFDC parts (the `folder` column) of the validation split (default: 35-39)")
    parser.add_argument("--test-folders", type=parse_folders, default=parse_folders("40-49"),
                        help="DFDC parts of the test split (default: 40-49); the other parts are training")
    parser.add_argument("--no-split", action="store_true", help="write no split column: train.py splits by "
                        "original (--val-fraction / --test-fraction)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.val_folders & args.test_folders:
        parser.error(f"--val-folders and --test-folders share parts {sorted(args.val_folders & args.test_folders)}")
    if args.out.exists() and not args.overwrite:
        raise DataError(f"{args.out}: exists; pass --overwrite to replace it")
    index, notes = import_index(args.videos, args.faces_df, args.val_folders, args.test_folders, not args.no_split)
    if not index:
        raise DataError(f"{args.videos}: no video left to write")
    write_index(args.out, index)
    for note in notes:
        print(note)
    fakes = sum(r["label"] == "fake" for r in index)
    splits = ""
    if "split" in index[0]:
        splits = ", " + " / ".join(f"{s} {sum(r['split'] == s for r in index)}" for s in ("train", "val", "test"))
    print(f"{args.out}: {len(index)} videos ({len(index) - fakes} real, {fakes} fake{splits})")


if __name__ == "__main__":
    from common.cli import run_cli

    run_cli(main)
