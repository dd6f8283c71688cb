"""The search agents, one builder per stable-baselines3 algorithm (a registry: ``create_agent``).

All use an MLP actor-critic (two hidden layers of 300, AMC's size) on the 14-feature observation.
Off-policy agents (DDPG, TD3, SAC) credit the final reward to every step of an episode
(``EpisodeRewardReplayBuffer``) and train once per episode; PPO gets the same credit from
Monte-Carlo returns (gamma = 1, GAE lambda = 1).

Several environments (a ``VecEnv``, e.g. ``autoprune.agents.parallel.RayVecEnv``) run episodes side by
side: SB3 then only accepts a ``train_freq`` in steps, so off-policy agents train after every
``steps_per_episode`` vector steps -- one episode in each environment -- with as many gradient steps
as transitions collected; PPO keeps about 8 episodes per update in all.

- ``ddpg``: Lillicrap et al. 2016 -- AMC's agent; Gaussian exploration noise decaying per episode.
- ``td3``: Fujimoto et al. 2018 -- DDPG with twin critics and delayed actor updates.
- ``sac``: Haarnoja et al. 2018 -- maximum-entropy actor-critic.
- ``ppo``: Schulman et al. 2017 -- on-policy clipped policy gradient.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise, VectorizedActionNoise

from autoprune.agents.common import EpisodeRewardReplayBuffer, ExplorationDecay
from autoprune.registry import Registry

NET_ARCH = [300, 300]


@dataclass
class AgentSettings:
    """What every agent builder needs besides the environment."""

    steps_per_episode: int
    warmup_episodes: int = 100
    gamma: float = 1.0
    learning_rate: float = 1e-3
    batch_size: int = 64
    noise_sigma: float = 0.5
    noise_decay: float = 0.99
    seed: int = 0


Builder = Callable[[gym.Env, AgentSettings, str | None], BaseAlgorithm]
AGENTS: Registry[Builder] = Registry("agent")
ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {"ddpg": DDPG, "td3": TD3, "sac": SAC, "ppo": PPO}


def list_agents() -> list[str]:
    return AGENTS.names()


def create_agent(name: str, env: gym.Env, settings: AgentSettings, tensorboard: str | None = None) -> BaseAlgorithm:
    """Build a new agent ``name`` on ``env``."""
    return AGENTS.get(name)(env, settings, tensorboard)


def load_agent(name: str, path: str | os.PathLike, env: gym.Env, sigma: list[float] | None = None) -> BaseAlgorithm:
    """Reload an agent saved with ``agent.save(path)`` to continue training it on ``env``; ``sigma``
    (from ``noise_sigma`` at save time) restores the exploration noise where it had decayed to (DDPG/TD3)."""
    agent = ALGORITHM_CLASSES[name].load(path, env=env)
    if sigma is not None:
        agent.action_noise = NormalActionNoise(np.zeros(len(sigma)), np.asarray(sigma, dtype=np.float64))
    return agent


def noise_sigma(agent: BaseAlgorithm) -> list[float] | None:
    """The current sigma of the agent's Gaussian exploration noise (None for agents without one)."""
    noise = getattr(agent, "action_noise", None)
    if isinstance(noise, VectorizedActionNoise):  # one process per environment, all with the same sigma
        noise = noise.noises[0]
    return noise._sigma.tolist() if isinstance(noise, NormalActionNoise) else None


def training_callbacks(agent: BaseAlgorithm, settings: AgentSettings) -> list[BaseCallback]:
    """What the agent's training needs besides the search monitor: noise decay for noisy agents."""
    return [ExplorationDecay(settings.noise_decay)] if noise_sigma(agent) is not None else []


def _num_envs(env: gym.Env) -> int:
    return int(getattr(env, "num_envs", 1))


def _off_policy_kwargs(s: AgentSettings, tensorboard: str | None, n_envs: int = 1) -> dict[str, Any]:
    # SB3 trains per episode with one environment only; with several, every steps_per_episode vector
    # steps (one fixed-length episode in each) is the same schedule. gradient_steps=-1: one gradient
    # step per transition collected in both cases.
    train_freq = (1, "episode") if n_envs == 1 else (s.steps_per_episode, "step")
    return dict(
        learning_rate=s.learning_rate, batch_size=s.batch_size, gamma=s.gamma, buffer_size=200_000,
        learning_starts=s.warmup_episodes * s.steps_per_episode, train_freq=train_freq, gradient_steps=-1,
        replay_buffer_class=EpisodeRewardReplayBuffer, policy_kwargs={"net_arch": NET_ARCH},
        tensorboard_log=tensorboard, seed=s.seed, verbose=0,
    )


def _noise(s: AgentSettings) -> NormalActionNoise:
    return NormalActionNoise(np.zeros(1), np.full(1, s.noise_sigma))


@AGENTS.register("ddpg")
def build_ddpg(env: gym.Env, s: AgentSettings, tensorboard: str | None = None) -> BaseAlgorithm:
    return DDPG("MlpPolicy", env, action_noise=_noise(s), **_off_policy_kwargs(s, tensorboard, _num_envs(env)))


@AGENTS.register("td3")
def build_td3(env: gym.Env, s: AgentSettings, tensorboard: str | None = None) -> BaseAlgorithm:
    return TD3("MlpPolicy", env, action_noise=_noise(s), **_off_policy_kwargs(s, tensorboard, _num_envs(env)))


@AGENTS.register("sac")
def build_sac(env: gym.Env, s: AgentSettings, tensorboard: str | None = None) -> BaseAlgorithm:
    return SAC("MlpPolicy", env, **_off_policy_kwargs(s, tensorboard, _num_envs(env)))


@AGENTS.register("ppo")
def build_ppo(env: gym.Env, s: AgentSettings, tensorboard: str | None = None) -> BaseAlgorithm:
    episodes_per_update = 8  # in all environments together (rounded up to a multiple of their number)
    n_steps = math.ceil(episodes_per_update / _num_envs(env)) * s.steps_per_episode  # per environment
    return PPO("MlpPolicy", env, learning_rate=3e-4, n_steps=n_steps,
               batch_size=s.steps_per_episode * 2, gamma=1.0, gae_lambda=1.0, n_epochs=10,
               policy_kwargs={"net_arch": NET_ARCH}, tensorboard_log=tensorboard, seed=s.seed, verbose=0)
