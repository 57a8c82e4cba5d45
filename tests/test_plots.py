"""What a reader sees in adaptation.png: one colour family per run, an accuracy panel for
classification, and a frame that neither starts at 0 by force nor follows a diverging mean."""

import matplotlib.figure
import pytest

from maml_ext.train import plots


def _curve(means, ci=0.05):
    return {"mean": means, "ci95": [ci] * len(means), "median": means}


@pytest.fixture
def drawn(monkeypatch):
    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k)))
    return figures


def test_a_diverging_mean_leaves_the_frame_and_the_axis_is_not_forced_to_zero(tmp_path, drawn):
    runs = {"a": {"num_tasks": 10, "k_query": 5, "loss_function": "mse", "shots": {
        "5": {"loss": _curve([3.0, 2.6, 2.5, 1e28], ci=1e28)}, "10": {"loss": _curve([3.0, 2.4, 2.3, 2.2])}}}}
    plots.adaptation_curve(runs, tmp_path / "a.png")
    ax = drawn[0].axes[0]
    bottom, top = ax.get_ylim()
    assert 0 <= bottom and top <= 1.2 * 3.0 * 1.06
    runs["a"]["shots"]["5"]["loss"] = _curve([3.0, 2.6, 2.5, 2.45])
    plots.adaptation_curve(runs, tmp_path / "b.png")
    assert drawn[1].axes[0].get_ylim()[0] > 2.0  # the data sit far above 0: so does the frame
    assert "query MSE" in drawn[1].axes[0].get_ylabel()


def test_runs_get_colour_families_and_classification_an_accuracy_panel(tmp_path, drawn):
    def run(acc):
        return {"num_tasks": 10, "k_query": 1, "loss_function": "cross_entropy", "shots": {
            "1": {"loss": _curve([1.6, 0.5]), "accuracy": _curve([0.2, acc])},
            "5": {"loss": _curve([1.6, 0.3]), "accuracy": _curve([0.2, acc + 0.05])}}}
    plots.adaptation_curve({"maml": run(0.9), "pretrain": run(0.5)}, tmp_path / "c.png")
    loss_ax, acc_ax = drawn[0].axes[:2]
    assert "accuracy" in acc_ax.get_ylabel() and acc_ax.lines[1].get_ydata()[1] == pytest.approx(95.0)
    colours = [line.get_color() for line in loss_ax.lines]
    blue, orange = plots._shades(plots._pyplot(), 0, 2), plots._shades(plots._pyplot(), 1, 2)
    assert colours == [*blue, *orange]
    assert "1 query example per class" in drawn[0]._suptitle.get_text()
