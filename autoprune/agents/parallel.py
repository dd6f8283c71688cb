"""Parallel and distributed search and evaluation on Ray.

- ``RayVecEnv``: a stable-baselines3 ``VecEnv`` whose sub-environments live in Ray actors, so the
  expensive last step of N episodes (the accuracy proxy) runs on N workers at once. A worker that
  dies is replaced and its episode replayed; the agent never notices.
- ``parallel_map``: independent jobs (e.g. the fine-tunes of ``evaluate``) as Ray tasks.
- ``connect``: start a local Ray instance or join a cluster.

Importing this module does not import or start Ray; with one worker and no cluster address, callers
need not touch it at all.
"""

from __future__ import annotations

import copy
import logging
import math
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

from autoprune.errors import AutopruneError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_started_here = False  # whether connect() started the Ray instance this process uses


# ---------------------------------------------------------------------------------------- connect
def _check_address(address: str) -> None:
    """Fail fast, with a clear message, when a "HOST:PORT" (or "ray://HOST:PORT") address does not answer."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise AutopruneError(f"Ray address must be 'auto' or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise AutopruneError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None


def connect(workers: int, address: str | None = None, cpus_per_worker: float = 1) -> dict[str, float]:
    """Make sure this process is connected to Ray and return the cluster's resources.

    Without ``address`` a local instance with ``workers * cpus_per_worker`` CPUs is started (quietly:
    no dashboard, worker logs not forwarded). ``address`` joins a running cluster: ``"auto"`` (the one
    ``ray start`` started on this machine, or ``RAY_ADDRESS``) or ``"HOST:PORT"`` of its head node.
    Does nothing but return the resources when Ray is already initialised.
    """
    global _started_here
    if workers < 1:
        raise AutopruneError(f"workers must be >= 1, got {workers}")
    if address is not None:
        _check_address(address)
    import ray

    if not ray.is_initialized():
        quiet: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
        if address is None:
            ray.init(num_cpus=max(1, math.ceil(workers * cpus_per_worker)), include_dashboard=False, **quiet)
            _started_here = True
        else:
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, TimeoutError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise AutopruneError(f"cannot reach the Ray cluster at {address}: {first}") from None
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def disconnect() -> None:
    """Shut down the local Ray instance if ``connect`` started it (a joined cluster keeps running)."""
    global _started_here
    if _started_here and "ray" in sys.modules:
        sys.modules["ray"].shutdown()
    _started_here = False


def _require_cpus(cpus: float, what: str) -> None:
    import ray

    available = ray.cluster_resources().get("CPU", 0.0)
    if cpus > available:
        raise AutopruneError(f"{what} needs {cpus:g} CPUs but the Ray cluster has {available:g}")


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


# ----------------------------------------------------------------------------------- env workers
class _EnvWorker:
    """One sub-environment inside a Ray actor (wrapped with ``ray.remote`` when first used).

    Every reset returns a snapshot of the random state the episode starts from (the env's
    ``np_random`` and torch's CPU generator), so a replacement worker can replay the episode exactly.
    """

    def __init__(self, env_factory: Callable[..., gym.Env], inputs: dict[str, Any], threads: int) -> None:
        _set_threads(threads)
        import ray

        values = ray.get(list(inputs.values())) if inputs else []
        self.env = env_factory(**dict(zip(inputs, values)))

    def pid(self) -> int:
        import os

        return os.getpid()

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        return self.env.observation_space, self.env.action_space

    def _snapshot(self) -> dict[str, Any]:
        import torch

        return {"np_random": copy.deepcopy(self.env.unwrapped.np_random), "torch": torch.get_rng_state()}

    def reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict, dict[str, Any]]:
        snapshot = self._snapshot()
        obs, info = self.env.reset(seed=seed, **({"options": options} if options else {}))
        return obs, info, snapshot

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, dict, tuple[dict, dict] | None]:
        """One step, SB3-style: on the episode's end the env is reset and ``info`` holds the terminal
        observation; the last element is then ``(reset_info, snapshot)``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        info["TimeLimit.truncated"] = bool(truncated and not terminated)
        restart = None
        if done:
            info["terminal_observation"] = obs
            obs, reset_info, snapshot = self.reset(None, None)
            restart = (reset_info, snapshot)
        return obs, float(reward), done, info, restart

    def replay(self, start: dict[str, Any], actions: list[np.ndarray]) -> Any:
        """Reset as ``start`` records and take ``actions``; return the last call's result."""
        import torch

        snapshot = start.get("snapshot")
        if snapshot is not None:
            torch.set_rng_state(snapshot["torch"])
            self.env.unwrapped.np_random = snapshot["np_random"]
        result: Any = self.reset(start["seed"], start["options"])
        for action in actions:
            result = self.step(action)
        return result

    def get_attr(self, name: str) -> Any:
        return self.env.get_wrapper_attr(name)

    def set_attr(self, name: str, value: Any) -> None:
        self.env.set_wrapper_attr(name, value)

    def env_method(self, name: str, args: tuple, kwargs: dict) -> Any:
        return self.env.get_wrapper_attr(name)(*args, **kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)

    def close(self) -> None:
        self.env.close()


class RayVecEnv(VecEnv):
    """``num_envs`` copies of an environment, each in its own Ray actor, stepped concurrently.

    ``env_factory(**inputs)`` builds one copy inside its actor; it must be picklable (a function or a
    ``functools.partial`` of a class, not a lambda over large objects). ``inputs`` holds the heavy
    arguments (the base model, the data splits): each is ``ray.put`` once here (or given as an object
    ref already) and fetched once by each actor when it starts -- never sent again per episode. Each
    actor reserves ``num_cpus`` CPUs and runs torch with that many threads. Ray must be initialised
    (``connect``); otherwise a local instance with ``num_envs * num_cpus`` CPUs is started.

    Behaves like SB3's ``DummyVecEnv``: sub-env ``i`` is seeded with ``seed + i`` at the reset after
    ``seed(seed)``, finished episodes are reset automatically (``infos[i]["terminal_observation"]``),
    and the same seed gives the same episodes whatever the timing.

    A sub-env whose actor dies (its process killed, its node lost) is rebuilt in a new actor, reset
    from the same seed, options and random state as the lost episode, and the episode's actions so far
    are replayed; the caller sees each episode's end exactly once. The episode must depend only on
    these (and on ``inputs``), as a Gymnasium env drawing its randomness from ``np_random`` does.
    After ``max_restarts`` consecutive failed replacements of one worker the error is raised.
    """

    def __init__(
        self,
        env_factory: Callable[..., gym.Env],
        num_envs: int,
        inputs: dict[str, Any] | None = None,
        num_cpus: float = 1,
        max_restarts: int = 3,
    ) -> None:
        if num_envs < 1:
            raise AutopruneError(f"num_envs must be >= 1, got {num_envs}")
        import ray

        if not ray.is_initialized():
            connect(num_envs, None, num_cpus)
        _require_cpus(num_cpus, "one environment worker")
        self._ray = ray
        self._factory = env_factory
        self._inputs = {k: v if isinstance(v, ray.ObjectRef) else ray.put(v) for k, v in (inputs or {}).items()}
        self._threads = max(1, math.floor(num_cpus))
        self._actor_class = ray.remote(_EnvWorker).options(num_cpus=num_cpus, max_restarts=0)
        self.max_restarts = max_restarts
        self.restarts = 0  # workers replaced so far
        self.actors = [self._new_actor() for _ in range(num_envs)]
        # what a replacement needs to rebuild each sub-env's current episode
        self._starts: list[dict[str, Any] | None] = [None] * num_envs
        self._actions: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self._pending: list[Any] = []
        try:
            observation_space, action_space = ray.get([actor.spaces.remote() for actor in self.actors])[0]
        except ray.exceptions.RayActorError as err:
            self.close()
            raise AutopruneError(f"the environment could not be built in a Ray worker: {_reason(err)}") from None
        super().__init__(num_envs, observation_space, action_space)
        self.keys, shapes, dtypes = obs_space_info(observation_space)
        self.buf_obs = {k: np.zeros((num_envs, *tuple(shapes[k])), dtype=dtypes[k]) for k in self.keys}
        self.closed = False

    # ------------------------------------------------------------------ workers
    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._factory, self._inputs, self._threads)

    def worker_pids(self) -> list[int]:
        """The process id of each sub-env's actor, in env order."""
        return [self._call(i, "pid") for i in range(self.num_envs)]

    def _recover(self, failed: dict[int, Exception]) -> dict[int, Any]:
        """Replace the dead workers ``failed`` (index -> error) side by side and replay each one's
        current episode; return each one's result of its last call."""
        ray = self._ray
        results: dict[int, Any] = {}
        for attempt in range(1, self.max_restarts + 1):
            refs = {}
            for i, error in failed.items():
                self.restarts += 1
                log.warning("environment worker %d died (%s); restarting it and replaying %d step(s) of its "
                            "episode (attempt %d of %d)", i, type(error).__name__, len(self._actions[i]), attempt,
                            self.max_restarts)
                try:
                    ray.kill(self.actors[i], no_restart=True)
                except Exception:  # already gone
                    pass
                self.actors[i] = self._new_actor()
                start = self._starts[i]  # None: never reset, nothing to replay
                refs[i] = self.actors[i].pid.remote() if start is None else self.actors[i].replay.remote(start, self._actions[i])
            failed = {}
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    if err.actor_init_failed:
                        raise AutopruneError(f"environment worker {i} could not be rebuilt: {_reason(err)}") from None
                    failed[i] = err
            if not failed:
                return results
        i, error = next(iter(failed.items()))
        raise AutopruneError(f"environment worker {i} died {self.max_restarts + 1} times in a row: {_first_line(error)}")

    def _gather(self, refs: list[Any]) -> list[Any]:
        """The results of one call per worker (``refs`` in env order), dead workers replaced and replayed."""
        results: list[Any] = [None] * len(refs)
        failed: dict[int, Exception] = {}
        for i, ref in enumerate(refs):
            try:
                results[i] = self._ray.get(ref)
            except self._ray.exceptions.RayActorError as err:
                failed[i] = err
        if failed:
            for i, result in self._recover(failed).items():
                results[i] = result
        return results

    def _call(self, i: int, method: str, *args: Any) -> Any:
        """A call on worker ``i`` that survives its death (the worker is rebuilt, then asked again)."""
        try:
            return self._ray.get(getattr(self.actors[i], method).remote(*args))
        except self._ray.exceptions.RayActorError as err:
            self._recover({i: err})
            return self._ray.get(getattr(self.actors[i], method).remote(*args))

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> VecEnvObs:
        starts = [{"seed": self._seeds[i], "options": self._options[i] or None, "snapshot": None}
                  for i in range(self.num_envs)]
        refs = [actor.reset.remote(s["seed"], s["options"]) for actor, s in zip(self.actors, starts)]
        self._starts, self._actions = starts, [[] for _ in range(self.num_envs)]
        for i, (obs, info, snapshot) in enumerate(self._gather(refs)):
            self.reset_infos[i] = info
            self._starts[i] = dict(starts[i], snapshot=snapshot)
            self._save_obs(i, obs)
        self._reset_seeds()
        self._reset_options()
        return self._obs_from_buf()

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = []
        for i, actor in enumerate(self.actors):
            action = np.array(actions[i], copy=True)
            self._actions[i].append(action)
            self._pending.append(actor.step.remote(action))

    def step_wait(self) -> VecEnvStepReturn:
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        dones = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict[str, Any]] = []
        for i, (obs, reward, done, info, restart) in enumerate(self._gather(self._pending)):
            rewards[i], dones[i] = reward, done
            if restart is not None:
                self.reset_infos[i], snapshot = restart
                self._starts[i] = {"seed": None, "options": None, "snapshot": snapshot}
                self._actions[i] = []
            self._save_obs(i, obs)
            infos.append(info)
        self._pending = []
        return self._obs_from_buf(), rewards, dones, infos

    def close(self) -> None:
        if getattr(self, "closed", False):
            return
        ray = self._ray
        try:
            ray.get([actor.close.remote() for actor in self.actors], timeout=30)
        except Exception:  # a dead or stuck worker: killed below anyway
            pass
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.closed = [], True

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self._call(i, "get_attr", attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute in the workers' envs (a worker rebuilt after a failure starts without it)."""
        for i in self._get_indices(indices):
            self._call(i, "set_attr", attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        return [self._call(i, "env_method", method_name, method_args, method_kwargs) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [self._call(i, "env_is_wrapped", wrapper_class) for i in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]

    def _save_obs(self, i: int, obs: Any) -> None:
        for key in self.keys:
            self.buf_obs[key][i] = obs if key is None else obs[key]

    def _obs_from_buf(self) -> VecEnvObs:
        return dict_to_obs(self.observation_space, copy.deepcopy(self.buf_obs))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _reason(error: BaseException) -> str:
    """One line for an actor's death: the exception its constructor raised (its traceback's last line),
    else the first line of Ray's message."""
    if getattr(error, "actor_init_failed", False):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if lines:
            return lines[-1].removeprefix(f"{AutopruneError.__module__}.{AutopruneError.__name__}: ")
    return _first_line(error)


# --------------------------------------------------------------------------------- parallel_map
def _run_task(fn: Callable[[T], R], item: T, threads: int) -> R:
    _set_threads(threads)
    return fn(item)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int, address: str | None = None,
                 threads_per_task: int = 1, on_result: Callable[[int, R], None] | None = None) -> list[R]:
    """``[fn(x) for x in items]`` with up to ``workers`` jobs at a time as Ray tasks, results in input order.

    Each task reserves ``threads_per_task`` CPUs and runs torch with that many threads; ``fn`` is sent
    to the cluster once. A task whose worker process dies is retried (up to twice). With one worker
    and no ``address`` the jobs run here, one after the other, without Ray. An exception in ``fn``
    is raised here. ``on_result(index, result)`` is called here as each job finishes, in the order
    they finish (e.g. to save long work as it goes).
    """
    report = on_result or (lambda index, result: None)
    items = list(items)
    if workers < 1:
        raise AutopruneError(f"workers must be >= 1, got {workers}")
    if threads_per_task < 1:
        raise AutopruneError(f"threads_per_task must be >= 1, got {threads_per_task}")
    if workers == 1 and address is None:
        results_here = []
        for index, item in enumerate(items):
            results_here.append(fn(item))
            report(index, results_here[-1])
        return results_here
    connect(workers, address, threads_per_task)
    _require_cpus(threads_per_task, "one task")
    import ray

    task = ray.remote(_run_task).options(num_cpus=threads_per_task, max_retries=2)
    fn_ref = ray.put(fn)
    results: list[Any] = [None] * len(items)
    running: dict[Any, int] = {}
    queue = iter(enumerate(items))
    for index, item in queue:
        running[task.remote(fn_ref, item, threads_per_task)] = index
        if len(running) >= workers:
            break
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        index = running.pop(done[0])
        results[index] = ray.get(done[0])
        report(index, results[index])
        for next_index, item in queue:
            running[task.remote(fn_ref, item, threads_per_task)] = next_index
            break
    return results
