import pytest
import torch

from helpers.methods.saliency import patch_share, saliency_maps
from helpers.models import SmallCNN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SmallCNN()
    m(torch.rand(8, 3, 28, 28))  # one train-mode pass so BN statistics are not trivial
    return m


@pytest.mark.parametrize("method", ["xgradcam", "gradcam", "gradcam++"])
@pytest.mark.parametrize("training", [True, False])
def test_cam_shape_range_and_mode(model, method, training):
    model.train(training)
    x = torch.rand(5, 3, 28, 28)
    maps = saliency_maps(model, x, model.cam_target_layer, method=method, batch_size=2)
    assert maps.shape == (5, 28, 28) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert model.training is training
    # hooks released: no forward hooks left on the target layer
    assert len(model.cam_target_layer._forward_hooks) == 0


def test_cam_leaves_gradients_untouched(model):
    model.eval()
    model.zero_grad(set_to_none=True)
    saliency_maps(model, torch.rand(3, 3, 28, 28), model.cam_target_layer)
    assert all(p.grad is None for p in model.parameters())
    marker = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, g in zip(model.parameters(), marker):
        p.grad = g
    saliency_maps(model, torch.rand(3, 3, 28, 28), model.cam_target_layer)
    assert all(p.grad is g for p, g in zip(model.parameters(), marker))
    model.zero_grad(set_to_none=True)


def test_targets_none_is_predicted_class(model):
    model.eval()
    x = torch.rand(6, 3, 28, 28)
    pred = model(x).argmax(1)
    a = saliency_maps(model, x, model.cam_target_layer)
    b = saliency_maps(model, x, model.cam_target_layer, labels=pred)
    c = saliency_maps(model, x, model.cam_target_layer, labels=1 - pred)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-3)


def test_bad_arguments(model):
    x = torch.rand(2, 3, 28, 28)
    with pytest.raises(ValueError, match="method"):
        saliency_maps(model, x, model.cam_target_layer, method="scorecam")
    with pytest.raises(ValueError, match="labels"):
        saliency_maps(model, x, model.cam_target_layer, labels=torch.zeros(3, dtype=torch.long))


def test_patch_share():
    m = torch.zeros(2, 28, 28)
    m[0, :4, :4] = 1.0
    m[0, 10, 10] = 16.0
    assert torch.allclose(patch_share(m, 4), torch.tensor([0.5, 0.0]))
