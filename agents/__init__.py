"""The Stable-Baselines3 layer of flowrl: flow policies, novelty bonuses, training."""

from .distributions import FlowDistribution  # noqa: E402
from .policies import FlowActorCriticPolicy, FlowSACPolicy  # noqa: E402
from .novelty import NoveltyCallback, attach_novelty, novelty_callbacks, novelty_density  # noqa: E402
from .config import ConfigError, TrainConfig, load_config  # noqa: E402
from .factory import build_model, evaluate, load_run, make_env, train  # noqa: E402
