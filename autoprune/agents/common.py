"""Pieces shared by the search agents: AMC's reward credit, exploration decay, the search monitor."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import VectorizedActionNoise
from tqdm import tqdm

from autoprune.pruning import PruningSpace
from autoprune.utils import atomic_path, write_text_atomic

BIN_WIDTH = 0.05  # target bins for "best strategy found per target"


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """A replay buffer that credits each episode's final reward to every one of its steps.

    The environment rewards only the last step; AMC (He et al. 2018, Sec. 3.4) assigns that reward
    to all transitions of the episode, which lets an off-policy critic learn from every step.
    With several environments each one's episode is tracked on its own (column ``env`` of the buffer).
    """

    # per-transition arrays, preallocated for buffer_size transitions (200,000: tens of MB)
    _STORED = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._episode_positions: list[list[int]] = [[] for _ in range(self.n_envs)]

    def __getstate__(self) -> dict[str, Any]:
        # saved (a search's resume file) trimmed to the filled part, so that the file grows with the
        # search, not with buffer_size, and a search's progress is small enough to keep with its results
        state = self.__dict__.copy()
        if not self.full:
            used = min(self.pos + 1, self.buffer_size)  # + 1: the next observation of a memory-optimised buffer
            for name in self._STORED:
                if isinstance(state.get(name), np.ndarray):
                    state[name] = state[name][:used].copy()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in self._STORED:  # back to full size; a buffer saved whole reads as it is
            array = state.get(name)
            if isinstance(array, np.ndarray) and len(array) < state["buffer_size"]:
                full = np.zeros((state["buffer_size"], *array.shape[1:]), dtype=array.dtype)
                full[:len(array)] = array
                state[name] = full
        self.__dict__.update(state)

    def _positions(self) -> list[list[int]]:
        # a buffer saved by a single-environment version holds one flat list
        if len(self._episode_positions) != self.n_envs or not all(isinstance(p, list) for p in self._episode_positions):
            self._episode_positions = [list(self._episode_positions)] if self.n_envs == 1 else [[] for _ in range(self.n_envs)]
        return self._episode_positions

    def add(self, obs, next_obs, action, reward, done, infos) -> None:  # type: ignore[no-untyped-def, override]
        position = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        positions = self._positions()
        dones = np.asarray(done).reshape(-1)
        rewards = np.asarray(reward, dtype=np.float32).reshape(-1)
        for env in range(self.n_envs):
            positions[env].append(position)
            if bool(dones[env]):
                for p in positions[env]:
                    self.rewards[p, env] = rewards[env]
                positions[env] = []


class ExplorationDecay(BaseCallback):
    """After warm-up, multiply the agent's Gaussian action noise sigma by ``decay`` after every episode (AMC).

    The noise is read from the agent at every step, so the callback also serves an agent loaded to resume.
    With several environments (one noise process each) every process decays once per episode that
    ended in any of them, so sigma follows the episode count as with one environment.
    """

    def __init__(self, decay: float = 0.99, min_sigma: float = 0.02) -> None:
        super().__init__()
        self.decay, self.min_sigma = decay, min_sigma

    def _on_step(self) -> bool:
        noise = self.model.action_noise
        finished = int(np.count_nonzero(self.locals["dones"]))
        if finished and self.num_timesteps > self.model.learning_starts:
            for process in noise.noises if isinstance(noise, VectorizedActionNoise) else [noise]:
                process._sigma = np.maximum(process._sigma * self.decay**finished, self.min_sigma)
        return True


def target_bin(target: float) -> str:
    return f"{math.floor(target / BIN_WIDTH + 1e-9) * BIN_WIDTH:.2f}"


class SearchMonitor(BaseCallback):
    """Logs every episode (CSV, TensorBoard, progress bar), tracks the best strategy per target bin,
    and saves a resumable checkpoint every ``checkpoint_every`` episodes.

    With several environments the episodes that end at the same step are logged in environment
    order; training stops after ``episodes`` episodes (any more that ended at that step are dropped).
    """

    def __init__(self, out_dir: Path, episodes: int, checkpoint_every: int, save: Any, state: dict | None = None,
                 progress: bool = True) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.episodes = episodes
        self.checkpoint_every = checkpoint_every
        self.save = save  # save(monitor) writes the checkpoint
        self.state = state or {"episodes": 0, "seconds": 0.0, "best": {}, "best_reward": None}
        self.progress = progress
        self._t0 = time.perf_counter()
        self._seconds0 = self.state["seconds"]

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.episodes, initial=self.state["episodes"], desc="search", unit="ep",
                        disable=not self.progress, mininterval=1)
        self.csv_path = self.out_dir / "progress.csv"
        if self.csv_path.exists():  # a search killed after its last save logged episodes it now runs again
            lines = self.csv_path.read_bytes().splitlines(keepends=True)  # bytes: the csv module's \r\n stay
            if len(lines) > 1 + self.state["episodes"]:
                with atomic_path(self.csv_path) as tmp:
                    Path(tmp).write_bytes(b"".join(lines[:1 + self.state["episodes"]]))

    @property
    def seconds(self) -> float:
        return self._seconds0 + time.perf_counter() - self._t0

    def _on_step(self) -> bool:
        finished = np.flatnonzero(np.asarray(self.locals["dones"]).reshape(-1))
        if finished.size == 0:
            return True
        rewards = np.asarray(self.locals["rewards"]).reshape(-1)
        for env in finished:
            if self.state["episodes"] >= self.episodes:
                break
            self._log_episode(self.locals["infos"][env], float(rewards[env]))
        return self.state["episodes"] < self.episodes

    def _log_episode(self, info: dict[str, Any], reward: float) -> None:
        s = self.state
        s["episodes"] += 1
        s["seconds"] = self.seconds
        row = {"episode": s["episodes"], "target": info["target"], "achieved_flops_ratio": info["achieved_flops_ratio"],
               "proxy_accuracy": info["proxy_accuracy"], "reward": reward, "seconds": round(s["seconds"], 2),
               "strategy": " ".join(f"{r:.4f}" for r in info["strategy"])}
        new_file = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        key = target_bin(info["target"])
        best = s["best"].get(key)
        if best is None or info["proxy_accuracy"] > best["proxy_accuracy"]:
            s["best"][key] = {"target": info["target"], "achieved_flops_ratio": info["achieved_flops_ratio"],
                              "proxy_accuracy": info["proxy_accuracy"], "strategy": info["strategy"], "episode": s["episodes"]}
        s["best_reward"] = reward if s["best_reward"] is None else max(s["best_reward"], reward)
        self.logger.record("search/proxy_accuracy", info["proxy_accuracy"])
        self.logger.record("search/target", info["target"])
        self.logger.record("search/reward", reward)
        self.logger.record("search/achieved_flops_ratio", info["achieved_flops_ratio"])
        self.logger.dump(s["episodes"])
        self.bar.update(1)
        self.bar.set_postfix(target=f"{info['target']:.2f}", proxy=f"{info['proxy_accuracy']:.3f}",
                             best_reward=f"{s['best_reward']:.3f}")
        if s["episodes"] % self.checkpoint_every == 0 or s["episodes"] >= self.episodes:
            self.save(self)

    def _on_training_end(self) -> None:
        self.bar.close()


def fingerprint(model: nn.Module) -> str:
    """A short hash of the model's weights: identifies the base model a policy was trained for."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def group_signature(space: PruningSpace) -> list[list]:
    return [[g.root, int(g.channels)] for g in space.groups]


def write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def torch_save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
