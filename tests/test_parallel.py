"""The Ray backend: RayVecEnv (parallel search, worker faults) and parallel_map, on a small stand-in env."""

from __future__ import annotations

import csv
import functools
import os
import signal
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

ray = pytest.importorskip("ray")

from autoprune.agents.algorithms import AgentSettings, create_agent, noise_sigma, training_callbacks  # noqa: E402
from autoprune.agents.common import SearchMonitor  # noqa: E402
from autoprune.agents.parallel import RayVecEnv, connect, parallel_map  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402

LENGTH = 4  # steps per episode


class ProxyStandIn(gym.Env):
    """Fixed-length episodes rewarded at the last step only, which sleeps like an accuracy proxy.

    The target comes from ``np_random``; the reward depends on the actions and on ``table``, a heavy
    input that reaches the workers as a Ray object ref.
    """

    def __init__(self, table: np.ndarray, last_step_sleep: float = 0.05) -> None:
        self.table = table
        self.last_step_sleep = last_step_sleep
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _obs(self) -> np.ndarray:
        previous = self.keep[-1] if self.keep else 1.0
        return np.array([self.t / LENGTH, self.target, previous], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.target = float(self.np_random.uniform(0.2, 0.9))
        self.t, self.keep = 0, []
        return self._obs(), {}

    def step(self, action):
        self.keep.append(float((np.clip(action[0], -1, 1) + 1) / 2))
        self.t += 1
        if self.t < LENGTH:
            return self._obs(), 0.0, False, False, {}
        slept = time.time()
        time.sleep(self.last_step_sleep)
        slept = (slept, time.time())
        achieved = float(np.mean(self.keep))
        proxy = 1.0 - abs(achieved - self.target) + float(self.table[int(achieved * (len(self.table) - 1))])
        info = {"target": self.target, "achieved_flops_ratio": achieved, "proxy_accuracy": proxy, "strategy": self.keep,
                "slept": slept}
        return self._obs(), proxy, True, False, info


TABLE = np.linspace(0.0, 0.01, 500_000, dtype=np.float32)  # 2 MB
factory = functools.partial(ProxyStandIn)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def local_ray():
    # Ray workers cannot import this test module: send its classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def venv(local_ray):
    """Two workers, shared by the tests below (starting a worker costs seconds: it imports torch)."""
    venv = RayVecEnv(factory, 2, inputs={"table": TABLE})
    yield venv
    venv.close()


class Kill(BaseCallback):
    """After vector step n, SIGKILLs the processes of the planned workers (some a little later, mid-step)."""

    def __init__(self, venv: RayVecEnv, plan: dict[int, list[tuple[int, float]]]) -> None:
        super().__init__()
        self.venv, self.plan, self.timers = venv, plan, []

    def _on_step(self) -> bool:
        kills = self.plan.get(self.n_calls, [])
        pids = self.venv.worker_pids() if kills else []
        for worker, delay in kills:
            pid = pids[worker]
            if delay:
                timer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
                timer.start()
                self.timers.append(timer)
            else:
                os.kill(pid, signal.SIGKILL)
        return True


def search(venv, tmp_path, episodes: int, seed: int = 3, extra=(), agent: str = "ddpg") -> list[tuple[int, float]]:
    """A DDPG search as ``autoprune search`` runs it; returns the monitor's (episode, reward) rows."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = AgentSettings(steps_per_episode=LENGTH, warmup_episodes=2, batch_size=16, seed=seed)
    model = create_agent(agent, venv, settings)
    monitor = SearchMonitor(tmp_path, episodes, checkpoint_every=1000, save=lambda m: None, progress=False)
    model.learn(total_timesteps=episodes * LENGTH, callback=[monitor, *training_callbacks(model, settings), *extra])
    search.last_agent = model
    with open(tmp_path / "progress.csv") as fh:
        return [(int(r["episode"]), float(r["reward"])) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("name", ["ddpg", "td3", "sac", "ppo"])
def test_agents_train_on_several_envs(name, tmp_path):
    """SB3 accepts every agent's settings with two envs (no Ray needed): each episode is logged once,
    the exploration noise decays once per episode, and the replay buffer credits each env's final reward
    to all steps of that env's episode."""
    venv = DummyVecEnv([functools.partial(factory, TABLE, 0.0)] * 2)
    rows = search(venv, tmp_path, episodes=10, agent=name)  # PPO: one update after 8 episodes
    assert [e for e, _ in rows] == list(range(1, 11))
    agent = search.last_agent
    if name in ("ddpg", "td3"):  # warm-up: 2 episodes, then 8 decays
        assert noise_sigma(agent) == pytest.approx([0.5 * 0.99**8])
    if name != "ppo":
        rewards = agent.replay_buffer.rewards[: 4 * LENGTH]  # 4 complete episodes per env
        episodes = rewards.reshape(4, LENGTH, 2)
        assert (episodes == episodes[:, -1:, :]).all() and (episodes != 0).all()
        assert {round(float(r), 5) for r, _ in zip(episodes[:, -1, :].ravel(), range(8))} <= {round(r, 5) for _, r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same search with SB3's in-process DummyVecEnv of two envs (no Ray)."""
    venv = DummyVecEnv([functools.partial(factory, TABLE)] * 2)
    return search(venv, tmp_path_factory.mktemp("reference"), episodes=8)


def _job(x: int) -> tuple[float, int]:
    """A stand-in fine-tune: later items finish first, so completion order differs from input order."""
    import torch

    time.sleep(0.05 * (6 - x % 6))
    return float((torch.arange(x, dtype=torch.float64) ** 2).sum()), torch.get_num_threads()


def test_parallel_map_matches_serial_order(local_ray):
    # runs before the shared `venv` exists: its two workers then hold both CPUs of the local instance
    items = [1, 2, 3, 4, 5, 30]
    serial = [_job(x)[0] for x in items]
    finished = []
    results = parallel_map(_job, items, workers=2, threads_per_task=1,
                           on_result=lambda index, result: finished.append((index, result)))
    assert [value for value, _ in results] == serial
    assert {threads for _, threads in results} == {1}
    assert sorted(finished) == list(enumerate(results))  # each result reported once, as it finished
    finished.clear()
    assert parallel_map(str, items, workers=1, on_result=lambda *job: finished.append(job)) == [str(x) for x in items]
    assert finished == [(i, str(x)) for i, x in enumerate(items)]  # in process, no Ray
    assert parallel_map(str, [], workers=2) == []


def test_vecenv_shapes_and_ddpg_search(venv, reference, tmp_path):
    assert venv.num_envs == 2 and venv.observation_space.shape == (3,)
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (2, 3) and obs.dtype == np.float32 and venv.observation_space.contains(obs[0])
    assert len(set(obs[:, 1])) == 2  # seeds 0 and 1 give different targets
    for t in range(1, LENGTH + 1):
        obs, rewards, dones, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
        assert obs.shape == (2, 3) and rewards.shape == (2,) and dones.shape == (2,) and len(infos) == 2
        assert dones.dtype == bool and rewards.dtype == np.float32
        assert list(dones) == [t == LENGTH] * 2
    assert all("terminal_observation" in info and info["terminal_observation"][0] == 1.0 for info in infos)
    assert (obs[:, 0] == 0).all()  # auto-reset
    assert (rewards > 0).all()
    assert venv.get_attr("last_step_sleep") == [0.05, 0.05]
    assert len(set(venv.worker_pids())) == 2

    rows = search(venv, tmp_path, episodes=7)  # odd: the last step ends two episodes, one is dropped
    assert [e for e, _ in rows] == list(range(1, 8))
    assert rows == reference[:7]  # the same search as SB3's own in-process DummyVecEnv


def test_same_seed_same_search(venv, reference, tmp_path):
    runs = [search(venv, tmp_path / str(run), episodes=8) for run in range(2)]
    assert runs[0] == runs[1] == reference
    assert len({r for _, r in runs[0]}) == 8  # two sub-envs with their own seeds, not a constant


def test_killed_worker_is_replaced_and_its_episode_replayed(venv, reference, tmp_path):
    # 8 episodes = 16 vector steps, 4 per episode. After vector step 7 worker 1 is killed while idle,
    # three steps into its second episode, and worker 0 20 ms later, while its last step (the proxy)
    # runs: both are replaced side by side and replay their episodes.
    before = venv.restarts
    kill = Kill(venv, {7: [(1, 0.0), (0, 0.02)]})
    rows = search(venv, tmp_path, episodes=8, extra=[kill])
    assert venv.restarts - before == 2
    assert [e for e, _ in rows] == list(range(1, 9))  # each episode logged once, none lost
    assert rows == reference  # the replay reproduces the lost episodes exactly


def test_two_workers_run_their_proxies_at_once(venv):
    # concurrency, not speed (timings belong to experiments/bench_parallel_search.py): the two workers'
    # last steps -- the proxy evaluations -- overlap in time at every vector step that ends episodes
    venv.set_attr("last_step_sleep", 0.2)
    try:
        venv.seed(0)
        venv.reset()
        overlaps = []
        for _ in range(2):
            for _ in range(LENGTH):
                _, _, dones, infos = venv.step(np.zeros((2, 1), dtype=np.float32))
            assert dones.all()
            (a0, a1), (b0, b1) = (info["slept"] for info in infos)
            overlaps.append(min(a1, b1) - max(a0, b0))
    finally:
        venv.set_attr("last_step_sleep", 0.05)
    assert all(o > 0.1 for o in overlaps), overlaps  # most of each 0.2 s proxy ran beside the other


def test_unreachable_cluster_is_a_clear_error():
    with pytest.raises(AutopruneError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        connect(2, "127.0.0.1:1")
    with pytest.raises(AutopruneError, match="HOST:PORT"):
        connect(2, "nonsense")
