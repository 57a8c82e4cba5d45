"""The code users copy first: README's Python blocks run as written, and examples/fused_ops.py runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_the_three_python_examples():
    blocks = _python_blocks()
    assert len(blocks) == 3 and "ops.mlp_maml(" in blocks[0] and "MAML(model" in blocks[1] and ".clone()" in blocks[2]


def test_readme_fused_ops_block_runs_and_both_calls_agree():
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(_python_blocks()[0], "README.md: fused ops", "exec"), scope)
    # The one-call gradient equals the backward of the autograd-function path.
    for p, g in zip(scope["params"], scope["grads"]):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert scope["query_loss"].shape == (25,)


def test_readme_front_end_block_runs_and_learns():
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(_python_blocks()[1], "README.md: front end", "exec"), scope)
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
    exec(compile(_python_blocks()[2], "README.md: clone", "exec"), scope)
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
