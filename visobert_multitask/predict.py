"""Per aspect of each review: absent / positive / negative / neutral, with the probabilities of the
four, from a visobert_multitask checkpoint.

    python visobert_multitask/predict.py --checkpoint runs/visobert_multitask/best.pt --text "pin trâu, camera mờ"
    python visobert_multitask/predict.py --checkpoint best.pt --file reviews.txt --format jsonl
    cat reviews.txt | python visobert_multitask/predict.py --checkpoint best.pt

Reviews come from --text (repeatable), --file (one review per line, blank lines skipped) or stdin.
The aspects, the tokenizer (the run's word vocabulary saved in the checkpoint, or the --encoder's own
tokenizer), --max-len and the model all come from the checkpoint, as train.evaluate_checkpoint
rebuilds them; the state of an aspect is the argmax of its four probabilities (losses.predicted_states).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `common` and the project importable as a script

import unicodedata

import torch

from common.checkpoint import CheckpointError
from common.cli import run_cli
from common.runtime import DataError, autocast, autocast_dtype, read_text
from common.tools.predict import eval_model, existing, open_run, predict_parser, write_rows
from visobert_multitask.data import STATES, ReviewSplit, build_tokenizer, encode_reviews, eval_loader
from visobert_multitask.model import AspectSentimentModel, ModelConfig

PROJECT = "visobert_multitask"
COLUMNS = ["review", "aspect", "state", *STATES]


def build_parser():
    parser = predict_parser(__doc__, formats=("table", "jsonl"))
    parser.add_argument("--text", action="append", default=None, help="a review (repeat for several)")
    parser.add_argument("--file", default=None, help="a UTF-8 text file, one review per line")
    return parser


def read_reviews(args) -> tuple[list[str], str]:
    """NFC-normalised reviews (as data.py normalises the training texts) and where they came from."""
    if args.text:
        texts, source = args.text, "--text"
    elif args.file:
        texts, source = read_text(existing(args.file, "review file")).splitlines(), args.file
    elif not sys.stdin.isatty():
        texts, source = sys.stdin.read().splitlines(), "stdin"
    else:
        raise DataError("no reviews: give --text, --file, or pipe one review per line on stdin")
    texts = [unicodedata.normalize("NFC", t).strip() for t in texts]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"{source}: no review text (only blank lines)")
    return texts, source


def print_table(rows: list[dict], texts: list[str], output: str | None) -> None:
    lines = []
    for number, text in enumerate(texts, start=1):
        lines.append(f"review {number}: {text}")
        lines.append(f"  {'aspect':<14}{'state':<10}" + "".join(f"{s:>10}" for s in STATES))
        lines += [f"  {r['aspect']:<14}{r['state']:<10}" + "".join(f"{r[s]:>10.3f}" for s in STATES)
                  for r in rows if r["review"] == number]
    text = "\n".join(lines) + "\n"
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    _, device, checkpoint = open_run(args, PROJECT)
    config, vocab = checkpoint["config"], checkpoint["extra"].get("vocab")
    if not config["encoder"] and vocab is None:
        raise CheckpointError(f"{args.checkpoint}: holds no word vocabulary, so its token ids cannot be rebuilt")
    texts, source = read_reviews(args)
    aspects = config["aspects"]
    tokenizer = build_tokenizer(config["encoder"], vocab)
    model = eval_model(AspectSentimentModel(ModelConfig(**config["model"])), checkpoint, args.checkpoint, device)
    reviews = ReviewSplit(texts, torch.zeros(len(texts), len(aspects), dtype=torch.long), tuple(aspects), source)
    # The evaluation loader of train.py: batches of --batch-size, padded to the longest review of each.
    loader = eval_loader(encode_reviews(reviews, tokenizer, config["max_len"]), tokenizer.pad_id, args.batch_size)
    with autocast(device, autocast_dtype(device, checkpoint["args"]["amp"])):
        logits = torch.cat([model(b["input_ids"].to(device), b["attention_mask"].to(device)).float() for b in loader])
    probs = logits.softmax(dim=-1)  # (N, A, 4), the states in data.STATES order

    rows = [{"review": n + 1, "aspect": aspect, "state": STATES[int(p.argmax())], **dict(zip(STATES, p.tolist()))}
            for n in range(len(texts)) for aspect, p in zip(aspects, probs[n])]
    if args.format == "table":
        print_table(rows, texts, args.output)
    else:
        write_rows([{"review": n + 1, "text": text,
                     "aspects": {r["aspect"]: {"state": r["state"], "probabilities": {s: r[s] for s in STATES}}
                                 for r in rows if r["review"] == n + 1}}
                    for n, text in enumerate(texts)], COLUMNS, "jsonl", args.output)
    return rows


if __name__ == "__main__":
    run_cli(main)
