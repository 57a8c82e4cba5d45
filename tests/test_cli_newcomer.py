"""What a newcomer's walkthrough of the CLI found (install7): a config named on --resume that is
not the run's, a misspelt --set key, a plot of an evaluation that does not exist, and the labels
of compared runs."""

import json


from maml_ext import cli
from maml_ext.train import loop

from _rl_settings import SMALL

TINY = ["model.hidden=[8]", "train.meta_batch=2", "train.checkpoint_every=2", "train.iterations=2"]


def train(out, config_name, *sets, resume=False):
    argv = ["train", *([config_name] if config_name else []), "--out", str(out), "--quiet", "--no-eval",
            *(["--resume"] if resume else []), *(a for s in sets for a in ("--set", s))]
    return cli.main(argv)


def test_resume_naming_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "sinusoid", *TINY) == 0
    capsys.readouterr()
    # glyphs-5way is another problem: the run's own config.json must not be trained on silently.
    assert train(out, "glyphs-5way", "train.iterations=4", resume=True) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"maml-ext: error: --resume: {out} is not a run of glyphs-5way: task.name is 'sinusoid' in the run, "
        f"'glyphs' in glyphs-5way; model.name is 'mlp' in the run, 'conv4' in glyphs-5way. To continue {out}, "
        f"leave the config out (maml-ext train --resume --out {out}); to train glyphs-5way, choose another --out"]
    assert json.loads((out / "config.json").read_text())["train"]["iterations"] == 2  # nothing was touched


def test_resume_naming_the_runs_config_with_other_start_overrides_continues(tmp_path, capsys):
    out = tmp_path / "run"
    # Started with --set algorithm.name=fomaml; resumed naming the config without repeating it.
    assert train(out, "sinusoid", *TINY, "algorithm.name=fomaml") == 0
    assert train(out, "sinusoid", "train.iterations=4", resume=True) == 0
    assert json.loads((out / "config.json").read_text())["algorithm"]["name"] == "fomaml"
    assert (out / loop.CHECKPOINT).is_file()


def test_a_misspelt_key_gets_the_key_it_resembles(tmp_path, capsys):
    for item, said in [
        ("train.iteration=3", "unknown config key(s) ['train.iteration'] (did you mean 'train.iterations'?); known: ["),
        ("algoritm.name=maml", "unknown config key(s) ['algoritm.name'] (did you mean 'algorithm.name'?); known: ["),
        ("algorithm.step=3", "algorithm 'maml' has no option(s) ['step'] (did you mean 'steps'?); its options: ["),
        ("model.hiden=[4]", "model 'mlp' has no option(s) ['hiden'] (did you mean 'hidden'?); its options: ["),
    ]:
        assert train(tmp_path / "run", "sinusoid", item) == 2
        err = capsys.readouterr().err
        assert err.startswith("maml-ext: error: " + said), err
        assert not (tmp_path / "run").exists()
    # The list of known keys says where the algorithm, model and task options go.
    assert train(tmp_path / "run", "sinusoid", "xyz.abc=1") == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and "and [model], [task], [algorithm] with a name and that plugin's" in err


EVAL = ["eval.num_tasks=4", "eval.shots=[5]", "eval.k_query=5", "eval.steps=1"]


def sets(*items):
    return [a for s in items for a in ("--set", s)]


def test_plot_without_that_evaluation_says_how_to_make_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "sinusoid", *TINY, *EVAL) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(out)]) == 0  # trained with --no-eval: no eval.json yet
    assert capsys.readouterr().err.splitlines() == [
        f"maml-ext: notice: no {out}/eval.json: adaptation.png is not drawn; evaluate the run with these settings "
        f"first: maml-ext eval {out}"]
    assert not (out / "adaptation.png").exists()
    assert cli.main(["plot", str(out), *sets("eval.num_tasks=3", "eval.shots=[1,5]")]) == 0
    err = capsys.readouterr().err
    command = err.partition("first: ")[2].split()
    assert command[:2] == ["maml-ext", "eval"], err
    assert cli.main(command[1:]) == 0  # the command it gives makes that evaluation
    capsys.readouterr()
    assert cli.main(["plot", str(out), *sets("eval.num_tasks=3", "eval.shots=[1,5]")]) == 0
    assert "notice" not in capsys.readouterr().err and (out / "adaptation.png").is_file()


def test_a_meta_rl_plot_without_that_evaluation_says_so_too(tmp_path, capsys):
    out = tmp_path / "nav"
    assert cli.main(["train", "point-nav", "--out", str(out), "--quiet", "--no-eval", "--set", "train.iterations=1",
                     "--set", "train.optimizer=adam", *[f"--set={s}" for s in SMALL]]) == 0
    capsys.readouterr()
    assert cli.main(["plot", str(out), "--set", "eval.steps=1"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"maml-ext: notice: no {out}/eval-steps=1.json: adaptation.png is not drawn; evaluate the run with these "
        f"settings first: maml-ext eval {out} --set eval.steps=1"]
    assert not (out / "adaptation.png").exists()
    # Its evaluation: a bar per policy, counting that policy's 0..2 steps (was one bar over both).
    assert cli.main(["eval", str(out)]) == 0
    lines = capsys.readouterr().err.splitlines()
    for policy in ("maml", "random init"):
        mine = [line for line in lines if line.startswith(f"evaluating {policy} (6 tasks x 8 rollouts, 0..2 steps) [")]
        assert mine and mine[-1].split("] ")[1].startswith("3/3 "), lines


def test_compared_runs_are_labelled_alike(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(a, "sinusoid", *TINY, *EVAL) == 0
    assert train(b, "sinusoid", *TINY, *EVAL, "algorithm.name=fomaml") == 0
    assert cli.main(["eval", str(a)]) == 0 and cli.main(["eval", str(b)]) == 0
    drawn = []
    monkeypatch.setattr(cli.plots, "adaptation_curve", lambda runs, path: (drawn.append(list(runs)), path)[1])
    assert cli.main(["plot", str(a), "--compare", str(b)]) == 0
    assert drawn == [["a (maml)", "b (fomaml)"]]  # was "maml" for this run, "b" for the other


def test_each_shot_count_gets_a_bar_whose_count_is_its_own_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "sinusoid", *TINY, *EVAL) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(out), *sets("eval.shots=[5,10]", "eval.num_tasks=3")]) == 0
    lines = capsys.readouterr().err.splitlines()  # a log, not a terminal: first and last state of each bar
    # 3 held-out tasks + 3 calibration tasks (MSE), each predicted after 0 and 1 steps: 12 task-steps
    # per shot count; before, one bar counted both shot counts' chunks under the first one's label.
    for shots in (5, 10):
        mine = [line for line in lines if line.startswith(f"evaluating {shots}-shot (3 tasks + 3 for calibration, 0..1 steps) [")]
        assert mine and mine[-1].split("] ")[1].startswith("12/12 "), lines
