"""One test per FIXES.md row of deepfake_effnet_lstm: the seed's behaviour is reproduced inline
(the old line), then the fixed code is shown free of the symptom."""

import csv

from deepfake_effnet_lstm import train as T
from tests.fixtures_deepfake_effnet_lstm import TINY_ARGS


def _log_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_dfd_val_data_validation_runs_on_the_validation_split(tmp_path, monkeypatch):
    """DFD-VAL-DATA: the seed validated on the training set; every evaluation must get the val split."""
    built, evaluated = {}, []
    real_make, real_evaluate = T.make_datasets, T.evaluate

    def spy_make(args):
        datasets, weights, info = real_make(args)
        built.update(datasets)
        return datasets, weights, info

    def spy_evaluate(model, dataset, *rest):
        evaluated.append(dataset)
        return real_evaluate(model, dataset, *rest)
    monkeypatch.setattr(T, "make_datasets", spy_make)
    monkeypatch.setattr(T, "evaluate", spy_evaluate)
    T.main([*TINY_ARGS, "--max-iters", "2", "--val-interval", "1", "--out", str(tmp_path / "run")])
    assert len(evaluated) == 2
    assert all(ds is built["val"] for ds in evaluated)
    assert not any(ds is built["train"] for ds in evaluated)  # the seed's loader
