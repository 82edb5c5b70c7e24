"""The environments of a config: ``env.id``, ``env.packages`` and ``env.wrappers``.

Any registered gymnasium environment can be trained on:

* ``env.id`` is a registered id, or gymnasium's ``module:EnvId`` form
  (``gymnasium_robotics:PointMaze_UMaze-v3``), whose module is imported first;
* ``env.packages`` lists modules imported before ``gym.make`` (importing them
  registers their environments: ``[gymnasium_robotics, minigrid]``);
* ``env.wrappers`` lists wrapper classes by import path, each a string or a
  one-key mapping to its keyword arguments (the RL Zoo convention)::

      wrappers:
        - minigrid.wrappers.ImgObsWrapper
        - envs.wrappers.ObservationBounds: {high: 10}

  They are applied in order to every env (training, evaluation, sweeps, the demo)
  before vectorisation; SB3's ``Monitor`` goes outside them, so episode returns
  are those of the wrapped env, as evaluation sees them.

A package that is not installed, a wrapper that does not import and an id
that nothing registered raise :class:`agents.config.ConfigError` naming the key.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any, Callable, Sequence

import gymnasium as gym

from ..config import ConfigError, EnvConfig, wrapper_spec

__all__ = ["resolve_env_id", "load_wrappers", "apply_wrappers", "make_single_env", "env_factory", "pip_name"]

#: pip names of the modules whose distribution is spelled otherwise (the rest: ``_`` becomes ``-``).
_PIP_NAMES = {"ale_py": "ale-py", "gymnasium_robotics": "gymnasium-robotics"}

#: Prefixes of well-known ids and the module that registers them (for the hint of an unknown id).
_KNOWN_IDS = {
    "MiniGrid-": "minigrid", "BabyAI-": "minigrid", "ALE/": "ale_py", "PointMaze_": "gymnasium_robotics",
    "AntMaze_": "gymnasium_robotics", "Fetch": "gymnasium_robotics", "HandManipulate": "gymnasium_robotics",
    "AdroitHand": "gymnasium_robotics", "FrankaKitchen": "gymnasium_robotics",
}

Wrappers = list[tuple[str, Callable[..., gym.Env], dict[str, Any]]]


def pip_name(module: str) -> str:
    """The pip distribution that provides the top-level package of ``module`` (best guess)."""
    top = module.split(".")[0]
    return _PIP_NAMES.get(top, top.replace("_", "-"))


def _import(module: str, key: str) -> ModuleType:
    """``importlib.import_module(module)``; a one-line :class:`ConfigError` under ``key`` if it fails."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = err.name or module
        if module == missing or module.startswith(missing + "."):
            top = module.split(".")[0]
            if missing == top:
                raise ConfigError(f"{key}: package {top!r} is not installed (pip install {pip_name(top)})") from None
            raise ConfigError(f"{key}: module {module!r} does not exist") from None
        raise ConfigError(f"{key}: importing {module!r} failed: {err}") from None
    except Exception as err:  # a package that is there but breaks on import
        raise ConfigError(f"{key}: importing {module!r} failed: {type(err).__name__}: {err}") from None


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _unknown_id_hint(name: str, module: str, packages: Sequence[str]) -> str:
    imported = [m for m in (module, *packages) if m]
    if imported:
        return f" (imported {', '.join(repr(m) for m in imported)}, which registered no such id)"
    for prefix, package in _KNOWN_IDS.items():
        if name.startswith(prefix):
            installed = _installed(package)
            how = "" if installed else f"; pip install {pip_name(package)}"
            return (f" (it is registered by {package!r}: list it in env.packages or write env.id as "
                    f"{package}:{name}{how})")
    return " (if a package registers it, list the package in env.packages or write env.id as module:EnvId)"


def resolve_env_id(env: EnvConfig) -> str:
    """Import ``env.packages`` and the ``module:`` of ``env.id``; the registered id to pass to ``gym.make``."""
    for i, package in enumerate(env.packages):
        _import(package, f"env.packages[{i}]")
    module, _, name = env.id.rpartition(":")
    if module:
        _import(module, "env.id")
    try:
        gym.spec(name)
    except gym.error.Error as err:
        raise ConfigError(f"env.id: {err}{_unknown_id_hint(name, module, env.packages)}") from None
    return name


def load_wrappers(items: Sequence[Any]) -> Wrappers:
    """``(path, class, kwargs)`` of each ``env.wrappers`` entry, imported; ``ConfigError`` names the entry."""
    out: Wrappers = []
    for i, item in enumerate(items):
        key = f"env.wrappers[{i}]"
        path, kwargs = wrapper_spec(item)
        module, _, attr = path.rpartition(".")
        try:
            obj = getattr(_import(module, key), attr)
        except AttributeError:
            raise ConfigError(f"{key}: module {module!r} has no {attr!r}") from None
        except ConfigError as err:
            raise ConfigError(f"{key}: cannot import {path!r}: {str(err)[len(key) + 2:]}") from None
        if not callable(obj):
            raise ConfigError(f"{key}: {path!r} is not a wrapper class (got {type(obj).__name__})")
        out.append((path, obj, kwargs))
    return out


def apply_wrappers(env: gym.Env, wrappers: Wrappers) -> gym.Env:
    """``env`` wrapped by each of ``wrappers`` in order (the first is innermost)."""
    for i, (path, cls, kwargs) in enumerate(wrappers):
        try:
            env = cls(env, **kwargs)
        except (TypeError, ValueError, AssertionError, gym.error.Error) as err:  # bad kwargs, a space it refuses
            raise ConfigError(f"env.wrappers[{i}]: {path}: {str(err) or type(err).__name__}") from None
    return env


def env_factory(env: EnvConfig) -> Callable[..., gym.Env]:
    """``f(**kwargs) -> gym.Env``: ``gym.make`` of ``env.id`` with ``kwargs``, then ``env.wrappers``.

    Packages and wrappers are imported here, so a bad config fails before any env is built.
    The callable suits SB3's ``make_vec_env(f, env_kwargs=env.kwargs)``.
    """
    env_id = resolve_env_id(env)
    wrappers = load_wrappers(env.wrappers)

    def make(**kwargs: Any) -> gym.Env:
        return apply_wrappers(gym.make(env_id, **kwargs), wrappers)

    return make


def make_single_env(env: EnvConfig) -> gym.Env:
    """One environment of ``env`` (``gym.make(env.id, **env.kwargs)`` and ``env.wrappers``), as for evaluation.

    Example:
        >>> from agents.config import EnvConfig
        >>> e = make_single_env(EnvConfig(id="CartPole-v1", wrappers=["gymnasium.wrappers.FlattenObservation"]))
        >>> type(e).__name__, e.observation_space.shape
        ('FlattenObservation', (4,))
    """
    return env_factory(env)(**env.kwargs)
