"""``search --workers`` and ``evaluate --workers`` on a local Ray instance started by the tests."""

import csv
import json

import pytest
import torch

ray = pytest.importorskip("ray")

from autoprune.agents import SearchConfig, search  # noqa: E402
from autoprune.agents.evaluate import evaluate_methods  # noqa: E402
from autoprune.recovery import FinetuneRecipe  # noqa: E402
from autoprune.task import PruningTask  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    from autoprune.agents.parallel import connect, disconnect

    if ray.is_initialized():
        ray.shutdown()
    connect(2)
    yield
    disconnect()


def progress(directory):
    return list(csv.DictReader(open(directory / "progress.csv")))


def test_search_with_two_workers_logs_every_episode_once_and_repeats(local_ray, trained_small, tmp_path):
    _, ckpt = trained_small
    config = SearchConfig(episodes=6, warmup_episodes=2, checkpoint_every=3, workers=2)
    runs = []
    for name in ("a", "b"):
        policy = search(tmp_path / name, config, checkpoint=ckpt, progress=False)
        rows = progress(tmp_path / name)
        assert [int(r["episode"]) for r in rows] == list(range(1, 7))
        assert policy.meta["episodes"] == 6 and policy.meta["config"]["workers"] == 2
        runs.append([(r["target"], r["reward"], r["strategy"]) for r in rows])
        for t in (0.3, 0.7):
            assert t - 0.02 <= policy.space.flops_ratio(policy.strategy(t)) <= t + 1e-12
    assert runs[0] == runs[1]  # the same seed and worker count: the same search


def test_evaluate_with_two_workers_gives_the_serial_rows(local_ray, trained_small, digits):
    model, _ = trained_small
    task = PruningTask(model, digits)
    recipe = FinetuneRecipe(epochs=1)
    kwargs = dict(baselines=["uniform", "global"], recipe=recipe, finetune_seeds=2, log=lambda s: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers fine-tune with one thread each
    try:
        serial = evaluate_methods(task, [0.4, 0.6], **kwargs)
    finally:
        torch.set_num_threads(threads)
    parallel = evaluate_methods(task, [0.4, 0.6], workers=2, **kwargs)
    drop = ("search_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in serial] == \
           [{k: v for k, v in r.items() if k not in drop} for r in parallel]
    assert json.dumps(parallel)  # plain values, as the report writes them
