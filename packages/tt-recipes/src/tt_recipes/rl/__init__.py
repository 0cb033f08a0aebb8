"""Online RL pieces the GRPO and PPO recipes compose.

- ``rollout``: prompts -> completions sampled with the policy (no gradients), as training
  batches; the generator behind a small interface (``RolloutEngine``).
- ``rewards``: reward functions with TRL's signature ``fn(prompts, completions, **columns)``,
  the bundled ones, and scoring several at once with weights.
- ``advantages``: group-normalised (GRPO, Dr. GRPO) and leave-one-out (RLOO) advantages.
- ``losses``: the policy-gradient loss family (``GRPOLoss``: grpo, dr_grpo, dapo, bnpo; token
  or sequence importance ratios; clipping; a k3 KL to a reference).
"""
