"""The Stable-Baselines3 layer of flowrl: flow policies, novelty bonuses, training."""

from .distributions import FlowDistribution  # noqa: E402
from .policies import FlowActorCriticPolicy, FlowSACPolicy  # noqa: E402
