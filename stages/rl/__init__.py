"""The RL engine: rollout, advantages, KL and losses for PPO, GRPO, RLOO and REINFORCE."""
