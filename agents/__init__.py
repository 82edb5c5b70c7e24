"""The Stable-Baselines3 layer of flowrl: flow policies, novelty bonuses, training."""

from .config import ConfigError, TrainConfig, load_config
from .novelty import NoveltyCallback, attach_novelty, novelty_callbacks, novelty_density
from .policies import FlowActorCriticPolicy, FlowDistribution, FlowSACPolicy
from .run import build_model, evaluate, load_run, make_env, train
