"""Least-squares reconstruction after pruning (autoprune.pruning.reconstruct): synthetic data, seconds each."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune import AutopruneError, models
from autoprune.checkpoint import load_model, save_model
from autoprune.pruning import PruningSpace, count_flops, count_params, reconstruct
from autoprune.pruning.reconstruct import _patches, _sample, _Stepper

X0 = torch.zeros(1, 3, 32, 32)


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so that intercepts and channel means matter."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum() / (b**2).sum())


# name -> (calibration batches): mobilenetv2 is checked on fewer, smaller images (it is fully convolutional)
CASES = {
    "smallcnn": lambda g: [torch.randn(16, 3, 32, 32, generator=g) for _ in range(2)],
    "resnet20": lambda g: [torch.randn(16, 3, 32, 32, generator=g) for _ in range(2)],
    "concatnet": lambda g: [torch.randn(16, 3, 32, 32, generator=g) for _ in range(2)],
    "mobilenetv2": lambda g: [torch.randn(8, 3, 16, 16, generator=g)],
}


@pytest.fixture(scope="module")
def built():
    """Per model: dense model, space, the 50% uniform strategy, the pruned model without and with
    reconstruction, and the calibration batches (built lazily, once)."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = _randomize(models.create(name, num_classes=10))
            space = PruningSpace(model, X0, validate=False)  # the zoo validates in test_pruning
            strategy = space.uniform(0.5)
            batches = CASES[name](torch.Generator().manual_seed(1))
            plain = space.apply(strategy)
            rec = space.apply(strategy, reconstruct=batches)
            cache[name] = (model, space, strategy, plain, rec, batches)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_no_refitted_layer_is_worse_and_the_report_is_what_the_model_computes(built, name):
    """(a) The report's errors, recomputed independently on the final model: after <= before."""
    model, space, strategy, plain, rec, batches = built(name)
    report = rec.autoprune_reconstruction
    assert report.layers and report.images == sum(len(b) for b in batches) and report.seconds > 0
    if name in ("mobilenetv2", "concatnet"):
        assert any(r.kind == "depthwise" for r in report.layers)
    removed = space.removed_channels(strategy)
    dense_mods, rec_mods, plain_mods = dict(model.named_modules()), dict(rec.named_modules()), dict(plain.named_modules())
    seen, handles = {}, []
    for r in report.layers:  # one forward pass per batch records every refitted layer
        handles.append(dense_mods[r.name].register_forward_hook(
            lambda m, i, o, name=r.name: seen.__setitem__(("dense", name), o.detach().clone())))
        handles.append(rec_mods[r.name].register_forward_hook(
            lambda m, i, o, name=r.name: seen.__setitem__(("rec", name), (i[0].detach().clone(), o.detach().clone()))))
    errors = {r.name: np.zeros(3) for r in report.layers}  # before, after, norm
    with torch.no_grad():
        for x in batches:
            model(x), rec(x)
            for r in report.layers:
                dense_layer = dense_mods[r.name]
                linear = isinstance(dense_layer, nn.Linear)
                out_dim = dense_layer.out_features if linear else dense_layer.out_channels
                keep = torch.tensor(sorted(set(range(out_dim)) - set(removed.get((r.name, True), []))))
                target = seen["dense", r.name].index_select(-1 if linear else 1, keep).double()
                inp, out = seen["rec", r.name]
                shift = 0.0
                if r.intercept == "bn":  # the intercept lives in the next BN's running_mean: mu' = mu - s
                    bn = _follower(rec, r.name)
                    shift = (plain_mods[bn].running_mean - rec_mods[bn].running_mean).reshape(1, -1, 1, 1)
                original = plain_mods[r.name](inp)  # the sliced original weights on the final inputs
                errors[r.name] += [float((original.double() - target).pow(2).sum()),
                                   float(((out + shift).double() - target).pow(2).sum()), float(target.pow(2).sum())]
    for h in handles:
        h.remove()
    for r in report.layers:
        before, after, norm = errors[r.name]
        assert r.error_after <= r.error_before, r
        assert 0 <= r.refitted <= r.channels and r.rows > 0
        assert after / norm == pytest.approx(r.error_after, rel=1e-3, abs=1e-12), r.name
        assert before / norm == pytest.approx(r.error_before, rel=1e-3, abs=1e-12), r.name
    refitted = [r for r in report.layers if r.refitted]
    assert len(refitted) >= len(report.layers) // 2
    assert all(r.error_after < r.error_before for r in refitted)


def _follower(model: nn.Module, name: str) -> str:
    """The BatchNorm right after conv ``name`` in the zoo's naming: ``x.0`` -> ``x.1``, ``convN`` -> ``bnN``."""
    prefix, _, leaf = name.rpartition(".")
    bn = f"{prefix}.1" if leaf == "0" else f"{prefix}.{leaf.replace('conv', 'bn')}".lstrip(".")
    assert isinstance(dict(model.named_modules())[bn], nn.BatchNorm2d), bn
    return bn


@pytest.mark.parametrize("name", list(CASES))
def test_reconstruction_brings_the_logits_closer_to_the_dense_model(built, name):
    """(b) On the calibration batches, for the 50% uniform strategy."""
    model, _, _, plain, rec, batches = built(name)
    with torch.no_grad():
        x = torch.cat(batches)
        dense, without, with_ = model(x), plain(x), rec(x)
    assert _relative(with_, dense) < 0.5 * _relative(without, dense)


@pytest.mark.parametrize("name", ["smallcnn", "resnet20"])
def test_reconstructed_model_keeps_its_flops_and_round_trips_through_a_file(built, name, tmp_path):
    """(c) Same shapes, FLOPs and parameters as the plain pruned model; saves and loads to identical outputs."""
    _, space, strategy, plain, rec, batches = built(name)
    assert count_flops(rec, X0) == space.flops(strategy) == count_flops(plain, X0)
    assert count_params(rec) == count_params(plain)
    save_model(tmp_path / "rec.pt", rec, name, 10)
    loaded, _ = load_model(tmp_path / "rec.pt")
    with torch.no_grad():
        assert torch.equal(loaded(batches[0]), rec.eval()(batches[0]))
        assert not torch.equal(loaded(batches[0]), plain(batches[0]))


def test_the_base_model_and_the_batches_are_untouched(built):
    model, space, strategy, *_ = built("smallcnn")
    before = copy.deepcopy(model.state_dict())
    batches = [torch.randn(8, 3, 32, 32)]
    copies = [b.clone() for b in batches]
    space.apply(strategy, reconstruct=batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(space.model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(batches[0], copies[0])


@pytest.mark.parametrize("name", ["smallcnn", "resnet20"])
def test_an_unpruned_strategy_changes_nothing(built, name):
    """(d) Keep everything: no layer sees a different input, so no weight moves."""
    model, space, *_ = built(name)
    rec = space.apply(np.ones(space.num_groups), reconstruct=[torch.randn(8, 3, 32, 32)])
    assert rec.autoprune_reconstruction.layers == []
    dense = model.state_dict()
    assert all(torch.equal(dense[k], v) for k, v in rec.state_dict().items())


def test_a_damaged_layer_is_recovered_exactly():
    """The solve itself: a layer whose dense target is reachable (same inputs, perturbed weights) gets
    the dense weights back -- a 3x3 conv without bias before a BN, and the linear head with a bias."""
    torch.manual_seed(0)
    dense = _randomize(models.create("smallcnn"))
    damaged = copy.deepcopy(dense)
    conv, fc = damaged.features[2][0], damaged.fc
    for p in (conv.weight, fc.weight, fc.bias):
        p.data.add_(0.3 * torch.randn_like(p))
    batches = [torch.randn(96, 3, 8, 8)]  # 96 rows for the 65 unknowns of each output of the head
    report = reconstruct(dense, damaged, batches, {}, ridge=1e-9, layers=["features.2.0", "fc"])
    assert [r.name for r in report.layers] == ["features.2.0", "fc"]
    assert [r.intercept for r in report.layers] == ["bn", "bias"]
    assert all(r.error_after < 1e-8 < r.error_before for r in report.layers)
    torch.testing.assert_close(conv.weight, dense.features[2][0].weight, atol=1e-4, rtol=1e-3)
    # (the head's weights of channels that are dead on these images are not identifiable: compare outputs)
    with torch.no_grad():
        torch.testing.assert_close(damaged(batches[0]), dense(batches[0]), atol=1e-4, rtol=1e-4)
    # the fitted intercept of the conv is ~0 (the damage had none), so the BN barely moves
    torch.testing.assert_close(damaged.features[2][1].running_mean, dense.features[2][1].running_mean, atol=1e-4, rtol=0)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(5, 4, 3, 1, 1), nn.Conv2d(5, 4, 3, 2, 1), nn.Conv2d(5, 4, 1), nn.Conv2d(5, 4, 3, 2, 2, dilation=2),
    nn.Conv2d(5, 4, (3, 1), (1, 2), (1, 0), padding_mode="reflect"), nn.Conv2d(5, 5, 3, 1, 1, groups=5),
])
def test_patches_are_the_receptive_fields_of_the_sampled_positions(conv):
    x = torch.randn(3, 5, 9, 11)
    with torch.no_grad():
        y = conv(x)
        b, p = _sample(3, y.shape[2] * y.shape[3], 7, torch.Generator().manual_seed(0))
        oh, ow = p // y.shape[3], p % y.shape[3]
        pad = conv._reversed_padding_repeated_twice
        xp = F.pad(x, pad, mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
        depthwise = conv.groups > 1
        rows = _patches(conv, xp, b, oh, ow, depthwise=depthwise)
        w = conv.weight.reshape(conv.out_channels, -1)
        pred = (rows * w).sum(-1) if depthwise else rows @ w.T
        torch.testing.assert_close(pred + conv.bias, y[b, :, oh, ow])
    assert len(set(zip(b.tolist(), p.tolist()))) == len(b) == 21  # distinct positions per image


def test_grouped_convolutions_are_left_alone_and_bad_removals_are_refused():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    pruned = copy.deepcopy(dense)
    pruned[0].weight.data.mul_(1.1)
    report = reconstruct(dense, pruned, [torch.randn(4, 3, 8, 8)], layers=["2"])
    assert report.layers == [] and report.skipped[0][0] == "2" and "grouped" in report.skipped[0][1]
    space = PruningSpace(models.create("smallcnn").eval(), X0, validate=False)
    small = space.apply(np.full(space.num_groups, 0.5))
    with pytest.raises(AutopruneError, match="removed"):
        reconstruct(space.model, small, [torch.randn(2, 3, 32, 32)], {})
    with pytest.raises(AutopruneError, match="calibration"):
        reconstruct(space.model, small, [], space.removed_channels(np.full(space.num_groups, 0.5)))


@pytest.mark.parametrize("name", ["smallcnn", "concatnet"])
def test_models_fx_cannot_trace_are_reconstructed_with_forward_hooks(built, name, monkeypatch):
    """The fallback (one stopped forward pass per layer) gives the same fits as the traced sweep."""
    model, space, strategy, plain, rec, batches = built(name)
    monkeypatch.setattr(_Stepper, "build", classmethod(lambda cls, *a: None))
    hooked = copy.deepcopy(plain)
    labelled = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]  # as a data loader yields them
    report = reconstruct(model, hooked, labelled, space.removed_channels(strategy))
    expected = rec.autoprune_reconstruction
    assert [r.name for r in report.layers] == [r.name for r in expected.layers]
    for got, want in zip(report.layers, expected.layers):
        assert got.error_after <= got.error_before
        assert got.error_after == pytest.approx(want.error_after, rel=0.05, abs=1e-9), got.name
    with torch.no_grad():
        x = torch.cat(batches)
        assert _relative(hooked(x), model(x)) == pytest.approx(_relative(rec(x), model(x)), rel=0.05, abs=1e-9)


class _SharedOutput(nn.Module):
    """A bias-free conv whose output feeds its BN *and* an add: the BN cannot hold its intercept."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.relu(self.stem(x)))
        return self.fc((self.bn(y) + y).mean((2, 3)))


def test_the_intercept_goes_into_a_batchnorm_only_when_it_alone_reads_the_layer():
    torch.manual_seed(0)
    dense = _randomize(_SharedOutput())
    pruned = copy.deepcopy(dense)
    pruned.conv.weight.data.add_(0.2 * torch.randn_like(pruned.conv.weight))
    before = pruned.bn.running_mean.clone()
    report = reconstruct(dense, pruned, [torch.randn(16, 3, 8, 8)], layers=["conv"])
    assert [(r.name, r.intercept) for r in report.layers] == [("conv", "none")]
    assert torch.equal(pruned.bn.running_mean, before)
    assert report.layers[0].error_after < report.layers[0].error_before
