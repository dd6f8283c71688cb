"""The proxy variants (``autoprune.task.proxy.PROXIES``): deterministic scores in [0, 1], distillation
towards the base model, reconstruction where the proxy asks for it, the setting and its CLI flag."""

import argparse
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoprune import AutopruneError
from autoprune.task import PruningSettings, PruningTask
from autoprune.task.proxy import (
    DISTILL_STEPS,
    PROXIES,
    AccuracyProxy,
    ReconstructionProxy,
    create_proxy,
    list_proxies,
)

STEPS = 20  # distillation steps in these tests (the default is DISTILL_STEPS)
BN = PruningSettings(proxy="bn", proxy_measure="accuracy")  # the plain proxy the variants are derived from


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task(trained_small, digits):
    model, _ = trained_small
    return PruningTask(model, digits, BN)


@pytest.fixture(scope="module")
def strategy(task):
    return task.prior_strategy(0.4)


def logits(model, splits):
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x) for x, _ in _batches(splits)])


def _batches(splits):
    from autoprune.data import BatchLoader

    return BatchLoader(splits.val, 256)


def test_registry_names_the_five_variants_and_recon_is_the_default(task, digits):
    assert list_proxies() == ["bn", "distill", "recon", "recon-bn", "recon-distill"]
    assert (PruningSettings().proxy, PruningSettings().proxy_measure) == ("recon", "kl")
    default = PruningTask(task.model, digits)
    assert type(default.proxy) is ReconstructionProxy and default.proxy.reconstruction is not None
    assert default.proxy.num_images == min(PruningSettings().proxy_images, len(digits.val))  # at most: fits any split
    assert type(task.proxy) is AccuracyProxy and task.proxy.name == "bn" and task.proxy.reconstruction is None
    for name in list_proxies():
        assert PROXIES.get(name).name == name


@pytest.mark.parametrize("name", list_proxies())
def test_every_proxy_scores_deterministically_in_the_unit_interval(task, strategy, name):
    derived = task.derive(proxy=name, proxy_steps=STEPS if "distill" in name else 0)
    assert (derived.proxy is task.proxy) == (name == "bn") and derived.proxy.name == name
    first = derived.score(strategy)
    assert 0.0 <= first <= 1.0
    derived.proxy.cache.clear()
    assert derived.score(strategy) == first  # the teacher's logits now come from the proxy's store
    fresh = PruningTask(task.model, task.splits, derived.settings, space=task.space, scores=task.scores)
    assert fresh.proxy is not derived.proxy and fresh.score(strategy) == first
    assert derived.derive(reward="accuracy").proxy is derived.proxy  # a reward change keeps the proxy and its cache


def test_recon_proxies_score_the_reconstructed_model_and_leave_the_task_models_alone(task, strategy):
    refit = task.derive(proxy="recon-bn")
    batches = refit.proxy.reconstruction
    assert batches is not None and sum(len(b) for b in batches) == 256
    built = refit.space.apply(strategy, refit.settings.criterion, reconstruct=batches)
    assert built.autoprune_reconstruction.layers
    assert refit.score(strategy) == refit.proxy.score(built)
    assert not hasattr(refit.apply(strategy), "autoprune_reconstruction")  # only the proxy reconstructs
    assert task.derive(proxy="recon-bn", reconstruct=64).proxy.reconstruction[0].shape[0] == 64


def test_recon_scores_the_reconstruction_with_the_base_models_bn_statistics(task, strategy, digits):
    refit = task.derive(proxy="recon", proxy_measure="kl")
    assert refit.proxy.reconstruction is not None and not refit.proxy.adaptive_bn and not refit.proxy.calib_batches
    built = refit.space.apply(strategy, refit.settings.criterion, reconstruct=refit.proxy.reconstruction)
    means = {n: m.running_mean.clone() for n, m in built.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert refit.score(strategy) == refit.proxy.score(built)
    assert all(m.running_mean.equal(means[n]) for n, m in built.named_modules() if n in means)  # not re-estimated
    # the same as recon-bn without adaptive BN, and not the same as recon-bn with it
    plain = create_proxy("recon-bn", digits, adaptive_bn=False, measure="kl", teacher=task.model)
    assert plain.score(copy.deepcopy(built)) == refit.score(strategy)
    assert task.derive(proxy="recon-bn", proxy_measure="kl").score(strategy) != refit.score(strategy)
    assert create_proxy("recon", digits, adaptive_bn=True).adaptive_bn is False  # the setting cannot turn it on


def test_distill_moves_the_logits_towards_the_teachers(task, strategy, digits):
    pruned = task.apply(strategy)
    bn, distill = create_proxy("bn", digits), create_proxy("distill", digits, teacher=task.model, finetune_steps=STEPS)
    assert create_proxy("distill", digits, teacher=task.model).finetune_steps == DISTILL_STEPS
    with_bn, distilled = copy.deepcopy(pruned), copy.deepcopy(pruned)
    bn.score(with_bn)
    distill.score(distilled)
    teacher = logits(task.model, digits)
    after_bn, after_distill = logits(with_bn, digits), logits(distilled, digits)
    assert not torch.allclose(after_bn, after_distill)

    def kl(student):
        return F.kl_div(F.log_softmax(student / 4, 1), F.log_softmax(teacher / 4, 1), reduction="batchmean",
                        log_target=True).item()

    assert kl(after_distill) < kl(after_bn)
    assert logits(task.model, digits).equal(teacher)  # the teacher is never modified


def test_unknown_names_and_a_missing_teacher_are_refused(digits):
    with pytest.raises(AutopruneError, match="unknown proxy 'distil'.*bn, distill, recon, recon-bn, recon-distill"):
        PruningSettings(proxy="distil")
    with pytest.raises(AutopruneError, match="unknown proxy 'nope'"):
        create_proxy("nope", digits)
    with pytest.raises(AutopruneError, match="teacher"):
        create_proxy("recon-distill", digits)


def test_policy_meta_without_the_field_reads_as_bn():
    legacy = {"criterion": "l1", "min_keep": 0.2, "tolerance": 0.02, "round_to": 1, "reward": "relative",
              "proxy_images": 500, "proxy_finetune_steps": 0}
    assert PruningSettings.from_policy_meta(legacy).proxy == "bn"
    record = PruningSettings().to_dict()
    del record["proxy"]
    assert PruningSettings.from_policy_meta({"settings": record}).proxy == "bn"
    chosen = PruningSettings(proxy="recon-distill", proxy_steps=300)
    assert PruningSettings.from_policy_meta({"settings": chosen.to_dict()}) == chosen


def test_cli_flag_sets_the_proxy():
    from autoprune.cli.common import settings_args, settings_from

    parser = argparse.ArgumentParser()
    settings_args(parser, "the library's")
    assert settings_from(parser.parse_args([])).proxy == "recon"
    assert settings_from(parser.parse_args(["--proxy", "distill", "--proxy-steps", "300"])) == PruningSettings(
        proxy="distill", proxy_steps=300)
    assert settings_from(parser.parse_args([]), PruningSettings(proxy="recon-bn")).proxy == "recon-bn"


def test_distill_batches_repeat_over_epochs_when_the_steps_need_more(digits, task):
    proxy = create_proxy("distill", digits, teacher=task.model, finetune_steps=3, finetune_batch_size=len(digits.train))
    assert len(list(proxy._batches())) == 3
    first, again = list(proxy._batches()), list(proxy._batches())
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_every_measure_is_in_the_unit_interval_and_kl_is_exp_minus_the_kl_to_the_base(task, strategy, digits):
    from autoprune.task.proxy import MEASURES

    assert MEASURES.names() == ["accuracy", "kl", "soft"] and PruningSettings().proxy_measure == "kl"
    pruned = task.apply(strategy)
    accuracy = create_proxy("bn", digits).score(copy.deepcopy(pruned))
    soft = create_proxy("bn", digits, measure="soft").score(copy.deepcopy(pruned))
    adapted = copy.deepcopy(pruned)  # score() re-estimates its BN statistics in place
    kept = create_proxy("bn", digits, measure="kl", teacher=task.model).score(adapted)
    for value in (accuracy, soft, kept):
        assert 0.0 < value < 1.0
    assert kept != accuracy and soft != accuracy
    teacher = logits(task.model, digits)
    kl = F.kl_div(F.log_softmax(logits(adapted, digits), 1), F.log_softmax(teacher, 1), reduction="batchmean",
                  log_target=True)
    assert kept == pytest.approx(float(torch.exp(-kl)), rel=1e-5)
    # the base model keeps all of its own function
    whole = create_proxy("bn", digits, measure="kl", teacher=task.model, adaptive_bn=False)
    assert whole.score(copy.deepcopy(task.model)) == pytest.approx(1.0)
    assert logits(task.model, digits).equal(teacher)  # the teacher is never modified


def test_the_measure_setting_reaches_the_proxy_and_its_flag_and_errors_are_clear(task, strategy, digits):
    from autoprune.cli.common import settings_args, settings_from

    derived = task.derive(proxy_measure="soft")
    assert derived.proxy is not task.proxy and derived.proxy.measure_name == "soft"
    assert derived.score(strategy) != task.score(strategy)
    parser = argparse.ArgumentParser()
    settings_args(parser, "the library's")
    assert settings_from(parser.parse_args(["--proxy-measure", "kl"])).proxy_measure == "kl"
    with pytest.raises(AutopruneError, match="unknown proxy measure 'top1'.*accuracy, kl, soft"):
        PruningSettings(proxy_measure="top1")
    with pytest.raises(AutopruneError, match="the kl measure compares with the base model"):
        create_proxy("bn", digits, measure="kl")
