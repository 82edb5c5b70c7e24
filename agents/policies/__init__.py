"""Flow action distributions and the SB3 policies built on them.

:mod:`agents.policies.distributions`: an SB3 ``Distribution`` backed by a
conditional flow (the state features are the context) with the tanh squash of
:class:`flowrl.transforms.squash.SquashToBox`; :mod:`agents.policies.flow_policies`:
:class:`FlowSACPolicy` (SAC) and :class:`FlowActorCriticPolicy` (PPO, A2C).
"""

from .distributions import BASES, DIRECTIONS, FlowDistribution, build_action_flow
from .flow_policies import (
    DETERMINISTIC_RULES,
    PPO_NAF_MIN_SLOPE,
    FlowActor,
    FlowActorCriticPolicy,
    FlowSACPolicy,
    critic_value,
)

__all__ = [
    "FlowDistribution", "build_action_flow", "DIRECTIONS", "BASES",
    "FlowActor", "FlowSACPolicy", "FlowActorCriticPolicy", "PPO_NAF_MIN_SLOPE", "DETERMINISTIC_RULES",
    "critic_value",
]
