"""Meta-reinforcement learning (MAML paper §5.3): batched task environments, a Gaussian MLP
policy, batched rollouts, the linear feature baseline, MAML-RL with TRPO or Adam, and its
training loop (``maml-ext train point-nav``).

Nothing heavy is imported here; import the submodules (``maml_ext.rl.algorithms``,
``maml_ext.rl.envs``, ``maml_ext.rl.train``) directly.
"""
