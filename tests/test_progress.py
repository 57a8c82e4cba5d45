"""The progress bar: what runs, how far, speed and ETA, each state printed once in a log."""

import io

from maml_ext.train import progress
from maml_ext.train.progress import Progress, track


def test_a_log_gets_each_state_once_and_the_last_one_for_sure():
    log = io.StringIO()
    bar = Progress(10, stream=log, what="evaluating", unit="step")
    for done in range(1, 11):
        bar.update(done, loss=0.5)
    bar.close(10, loss=0.5)  # the final state was not shown yet (30 s interval): shown now, once
    bar.close(10, loss=0.5)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("evaluating [") and "1/10" in lines[0] and "loss 0.5000" in lines[0]
    assert [line for line in lines if "10/10" in line] == [lines[-1]] and "eta 0:00" in lines[-1]


def test_update_then_close_at_the_end_prints_the_end_once():
    log = io.StringIO()
    bar = Progress(3, stream=log, log_seconds=0.0)
    for done in (1, 2, 3):
        bar.update(done)
    bar.close(3)
    assert sum("3/3" in line for line in log.getvalue().splitlines()) == 1


def test_slow_work_shows_seconds_per_unit(monkeypatch):
    log = io.StringIO()
    bar = Progress(4, stream=log, unit="task")
    bar.t0 -= 10.0  # one task took ten seconds
    bar.update(1)
    bar.close(1)
    assert "10.0 s/task" in log.getvalue() and "eta 0:30" in log.getvalue()


def test_inner_steps_report_on_the_innermost_open_bar():
    outer_log, inner_log = io.StringIO(), io.StringIO()
    outer = Progress(5, stream=outer_log, log_seconds=0.0, what="training")
    inner = Progress(2, stream=inner_log, log_seconds=0.0, what="evaluating")
    progress.detail("rollouts: time step", 7, 200)
    assert "| rollouts: time step 7/200" in inner_log.getvalue() and not outer_log.getvalue()
    assert "0/2 0.0 it/s eta ?" in inner_log.getvalue()  # no speed yet: no made-up ETA
    inner.close(2)
    progress.detail("rollouts: time step", 8, 200)
    assert "| rollouts: time step 8/200" in outer_log.getvalue()
    outer.update(1)  # a new unit of work clears the detail
    assert "1/5" in outer_log.getvalue().splitlines()[-1] and "|" not in outer_log.getvalue().splitlines()[-1]
    outer.close(5)
    progress.detail("rollouts: time step", 9, 200)  # no bar open: nothing anywhere
    assert "9/200" not in outer_log.getvalue() + inner_log.getvalue()


def test_track_yields_everything_and_reports(capsys):
    assert list(track(range(5), 5, "rendering", "font")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "rendering [" in err and "5/5" in err
    assert list(track(range(2), 2, "quiet", enabled=False)) == [0, 1] and not capsys.readouterr().err
