import pytest
import torch

from autoprune import AutopruneError, models


@pytest.mark.parametrize("name", models.list_models())
def test_every_zoo_model_runs_forward_and_backward(name):
    model = models.create(name, num_classes=7)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_depths_have_the_published_parameter_counts():
    # He et al. 2016 Table 6: 0.27M / 0.46M / 0.85M (option-B shortcuts add a few thousand)
    counts = {n: sum(p.numel() for p in models.create(n).parameters()) for n in ("resnet20", "resnet32", "resnet56")}
    assert 0.26e6 < counts["resnet20"] < 0.29e6
    assert 0.45e6 < counts["resnet32"] < 0.48e6
    assert 0.84e6 < counts["resnet56"] < 0.87e6


def test_torchvision_models_by_name():
    model = models.create("tv:resnet18", num_classes=5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("name", ["nope", "tv:nope"])
def test_unknown_model_is_a_clear_error(name):
    with pytest.raises(AutopruneError, match="unknown"):
        models.create(name)
