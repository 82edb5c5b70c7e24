"""The Stable-Baselines3 layer of flowrl: flow policies, novelty bonuses, training."""
