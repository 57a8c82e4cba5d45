"""The code users copy first: README's Python blocks run as written, and examples/fused_ops.py runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# Each example is the one README Python block containing its marker, wherever it stands.
MARKERS = {"fused ops": "ops.mlp_maml(", "front end": "MAML(model", "clone": ".clone()"}


def _block(name: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if MARKERS[name] in b]
    assert len(found) == 1, f"README.md: expected one Python block containing {MARKERS[name]!r}, found {len(found)}"
    return found[0]


def test_readme_has_the_three_python_examples():
    for name in MARKERS:
        _block(name)


def test_readme_keeps_the_ci_test_command_on_a_line_of_its_own():
    command = "bash .ci/setup.sh && .venv/bin/pytest -q && MAML_EXT_NO_EXTENSION=1 .venv/bin/pytest -q"
    assert command in (ROOT / "README.md").read_text().splitlines()  # .ci/run greps for it


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_links_resolve():
    """Every relative link of README.md and docs/*.md names a file of the repository, and a
    heading of that file when it has an anchor."""
    missing = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            if not path.exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                missing.append(f"{page.relative_to(ROOT)} -> {target}#{anchor}")
    assert not missing, missing


def test_readme_fused_ops_block_runs_and_both_calls_agree():
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(_block("fused ops"), "README.md: fused ops", "exec"), scope)
    # The one-call gradient equals the backward of the autograd-function path.
    for p, g in zip(scope["params"], scope["grads"]):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert scope["query_loss"].shape == (25,)


def test_readme_front_end_block_runs_and_learns():
    scope: dict = {}
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    exec(compile(_block("front end"), "README.md: front end", "exec"), scope)
    torch.set_num_threads(threads)  # the block sets one thread; the other tests keep theirs
    assert scope["prediction"].shape == (25, 10, 1)
    learner, batch = scope["learner"], scope["batch"]
    before = learner.predict(learner.adapt(batch.x_support, batch.y_support, steps=0), batch.x_query)
    after = scope["prediction"]
    # After its 1,000 meta-iterations, 10 adaptation steps clearly beat none on these tasks.
    mse = lambda p: (p - batch.y_query).pow(2).mean().item()  # noqa: E731
    assert mse(after) < 0.7 * mse(before)

    # The clone block continues in the same session: one more meta-step, by per-task clones.
    expected = torch.autograd.grad(learner.meta_loss(batch), list(learner.parameters()))
    step = scope["meta_opt"].step
    seen = []
    scope["meta_opt"].step = lambda: seen.append([p.grad.clone() for p in learner.parameters()])
    exec(compile(_block("clone"), "README.md: clone", "exec"), scope)
    scope["meta_opt"].step = step
    for got, want in zip(seen[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_fused_ops_example_script_runs(tmp_path):
    env = {**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "fused_ops.py"), "--iterations", "200"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    losses = [float(m) for m in re.findall(r"query MSE ([0-9.]+)", done.stdout)]
    assert len(losses) == 10 and losses[-1] < losses[0]
