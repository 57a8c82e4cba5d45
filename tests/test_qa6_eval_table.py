"""The table ``maml-ext eval`` prints: a percentage reads ``89.8 ± 1.5%`` (one decimal, the unit
after the interval, which is in percentage points), a loss ``0.619 ± 0.086``."""

from maml_ext.train import evaluate


def _metric(mean, ci):
    return {"mean": mean, "ci95": ci, "median": mean}


RESULTS = {"loss_function": "mse", "shots": {"5": {
    "loss": _metric([0.6191, 0.0123], [0.0861, 0.0049]),
    "accuracy": _metric([0.80155, 0.89805], [0.01449, 0.01451]),
    "coverage90": _metric([0.89805, 0.9], [0.01451, 0.0104]),
    "ece": {"value": [0.01734, 0.0871], "bins": 10},
}}}


def test_percentages_are_unambiguous_at_one_decimal():
    rows = {line.split(" | ")[1]: line.split(" | ")[2:] for line in evaluate.table(RESULTS).splitlines()[2:]}
    assert rows["MSE"] == ["0.619 ± 0.086", "0.012 ± 0.005 |"]
    assert rows["accuracy"] == ["80.2 ± 1.4%", "89.8 ± 1.5% |"]
    assert rows["90% interval coverage"] == ["89.8 ± 1.5%", "90.0 ± 1.0% |"]
    assert rows["ECE (10 bins)"] == ["1.7%", "8.7% |"]
    assert evaluate.table(RESULTS, steps=(0, 3)).splitlines()[3].endswith("| 80.2 ± 1.4% | – |")
