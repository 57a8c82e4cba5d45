"""Meta-training loop, evaluation, checkpoints and plots behind the ``maml-ext`` CLI."""
