"""Non-mutually-exclusive task families and their controls (the memorization benchmark)."""

import pytest
import torch

from _fewshot_data import write_omniglot
from maml_ext import plugins
from maml_ext.tasks.episodes import Episodes
from maml_ext.tasks.memorization import CodedSinusoid, FixedLabelEpisodes


def test_coded_sinusoid_code_names_the_amplitude_in_training():
    family = CodedSinusoid(codes=20, train_codes=16, noise=0.0)
    b = family.sample(400, 10, 10, torch.Generator().manual_seed(0))
    assert b.x_support.shape == (400, 10, 21) and b.y_query.shape == (400, 10, 1)
    code = b.x_support[:, 0, 1:].argmax(1)
    assert torch.equal(b.x_support[:, :, 1:].sum(2), torch.ones(400, 10)) and torch.equal(code, b.info["code"])
    assert code.max() < 16
    # a memoriser that never looks at the support set solves every training task exactly
    memo = family.amps[code][:, None, None] * torch.sin(b.x_query[:, :, :1])
    torch.testing.assert_close(b.y_query, memo)
    assert -5 <= b.x_query[:, :, 0].min() and b.x_query[:, :, 0].max() <= 5
    again = family.sample(400, 10, 10, torch.Generator().manual_seed(0))
    assert torch.equal(again.x_support, b.x_support) and torch.equal(again.y_query, b.y_query)


def test_exclusive_control_and_held_out_codes_say_nothing():
    for family in (CodedSinusoid(exclusive=True, noise=0.0), CodedSinusoid(noise=0.0).held_out):
        b = family.sample(2000, 5, 5, torch.Generator().manual_seed(1))
        code, amp = b.info["code"], b.info["amplitude"]
        per_code = [amp[code == c].unique().numel() for c in range(16)]
        assert min(per_code) > 3  # one code, many amplitudes
        torch.testing.assert_close(b.y_support, amp[:, None, None] * torch.sin(b.x_support[:, :, :1]))
    grid = CodedSinusoid(exclusive=True).sample(500, 5, 5, torch.Generator().manual_seed(2)).info["amplitude"]
    assert set(grid.tolist()) <= set(CodedSinusoid().amps[:16].tolist())  # the control keeps the training amplitudes
    held = CodedSinusoid().held_out.sample(500, 5, 5, torch.Generator().manual_seed(2)).info["amplitude"]
    assert 0.1 <= held.min() and held.max() <= 4.0 and held.unique().numel() == 500  # off the grid


def test_noise_is_added():
    b = CodedSinusoid(noise=0.1).sample(300, 10, 10, torch.Generator().manual_seed(0))
    resid = b.y_support - b.info["amplitude"][:, None, None] * torch.sin(b.x_support[:, :, :1])
    assert 0.09 < resid.std().item() < 0.11


@pytest.mark.parametrize("options, match", [
    ({"train_codes": 21}, "task.train_codes must be an integer in"), ({"codes": 0}, "task.codes must be"),
    ({"amplitude": (4.0, 0.1)}, "task.amplitude must be"), ({"noise": -1.0}, "task.noise must be"),
])
def test_bad_sinusoid_options(options, match):
    with pytest.raises(ValueError, match=match):
        CodedSinusoid(**options)


def test_fixed_label_episodes_keep_each_class_on_one_label():
    labels = torch.arange(120) % 12
    inputs = torch.arange(120.0)[:, None]
    fixed = FixedLabelEpisodes(inputs, labels, n_way=3, seed=0)
    assert torch.equal(torch.bincount(fixed.group), torch.tensor([4, 4, 4]))
    seen = {}
    for episodes, fixed_labels in ((fixed, True), (Episodes(inputs, labels, n_way=3), False)):
        b = episodes.sample(200, 2, 3, torch.Generator().manual_seed(0))
        classes = labels[b.x_support[..., 0].long()]  # [T, 3·2]
        label_of = {}
        for c, y in zip(classes.flatten().tolist(), b.y_support.flatten().tolist()):
            label_of.setdefault(c, set()).add(y)
        seen[fixed_labels] = label_of
        assert all(len(set(row.tolist())) == 3 for row in classes)  # 3 distinct classes per episode
    assert all(len(v) == 1 for v in seen[True].values()) and len(seen[True]) == 12
    assert all(seen[True][c] == {fixed.group[c].item()} for c in seen[True])
    assert any(len(v) > 1 for v in seen[False].values())  # the control: labels move


def test_registered_as_task_plugins():
    family = plugins.build_task("memo_sinusoid", exclusive=True, codes=10, train_codes=8)
    assert isinstance(family, CodedSinusoid) and family.exclusive and family.in_features == 11
    assert "memo_glyphs" in plugins.tasks.names()


def test_memo_glyphs_fix_labels_in_training_only(tmp_path, monkeypatch):

    monkeypatch.setenv("MAML_EXT_CACHE", str(tmp_path / "cache"))
    write_omniglot(tmp_path / "glyphs", alphabets=(("Alpha", 8), ("Beta", 8)), evaluation=(("Gamma", 6),))
    (tmp_path / "glyphs" / "manifest.json").write_text("{}")

    def label_sets(family, tasks=60):
        b = family.sample(tasks, 1, 1, torch.Generator().manual_seed(0))
        found = {}
        for classes, order in zip(b.info["classes"].tolist(), b.y_support.tolist()):
            for c, y in zip(classes, order):  # support example i has label i: class classes[i]
                found.setdefault(c, set()).add(y)
        return found

    memo = plugins.build_task("memo_glyphs", root=str(tmp_path / "glyphs"), n_way=3)
    control = plugins.build_task("memo_glyphs", root=str(tmp_path / "glyphs"), n_way=3, exclusive=True)
    assert isinstance(memo.episodes, FixedLabelEpisodes) and not isinstance(control.episodes, FixedLabelEpisodes)
    assert all(len(v) == 1 for v in label_sets(memo).values())
    for family in (control, memo.held_out):
        assert any(len(v) > 1 for v in label_sets(family).values())


def test_memo_glyphs_train_classes_subset_shared_by_the_control(tmp_path, monkeypatch):
    monkeypatch.setenv("MAML_EXT_CACHE", str(tmp_path / "cache"))
    write_omniglot(tmp_path / "glyphs", alphabets=(("Alpha", 8), ("Beta", 8)), evaluation=(("Gamma", 6),))
    (tmp_path / "glyphs" / "manifest.json").write_text("{}")
    root = str(tmp_path / "glyphs")
    full = plugins.build_task("memo_glyphs", root=root, n_way=3)
    memo = plugins.build_task("memo_glyphs", root=root, n_way=3, train_classes=6)
    control = plugins.build_task("memo_glyphs", root=root, n_way=3, train_classes=6, exclusive=True)
    assert len(full.episodes._classes) > 6
    for family in (memo, control):
        seen = set(family.sample(80, 1, 1, torch.Generator().manual_seed(0)).info["classes"].flatten().tolist())
        assert seen == set(memo.episodes._classes.tolist()) and len(seen) == 6
    assert torch.equal(memo.episodes._classes, control.episodes._classes)
    assert isinstance(memo.episodes, FixedLabelEpisodes) and not isinstance(control.episodes, FixedLabelEpisodes)
    assert len(memo.held_out.episodes._classes) == len(full.held_out.episodes._classes)  # held-out: every test class
    for bad in (2, 10**6, -1, 2.5):
        with pytest.raises(ValueError, match="task.train_classes must be"):
            plugins.build_task("memo_glyphs", root=root, n_way=3, train_classes=bad)


def test_memo_glyphs_eval_split_selects_validation_classes(tmp_path, monkeypatch):
    """``eval_split="val"``: held-out episodes from the validation classes, disjoint from the test
    classes and the training classes, so settings can be chosen without the test episodes."""
    monkeypatch.setenv("MAML_EXT_CACHE", str(tmp_path / "cache"))
    write_omniglot(tmp_path / "glyphs", alphabets=(("Alpha", 8), ("Beta", 8)), evaluation=(("Gamma", 6),))
    (tmp_path / "glyphs" / "manifest.json").write_text("{}")
    root = str(tmp_path / "glyphs")
    test = plugins.build_task("memo_glyphs", root=root, n_way=3)
    val = plugins.build_task("memo_glyphs", root=root, n_way=3, eval_split="val", train_classes=6)
    names = {split: set(family.held_out.split.classes) for split, family in (("test", test), ("val", val))}
    assert names["val"] and names["test"] and not names["val"] & names["test"]
    assert not names["val"] & set(test.split.classes)
    assert torch.equal(val.episodes._classes, plugins.build_task("memo_glyphs", root=root, n_way=3, train_classes=6).episodes._classes)
    with pytest.raises(ValueError, match="task.eval_split must be one of"):
        plugins.build_task("memo_glyphs", root=root, n_way=3, eval_split="train")
