import pytest
import torch

from sharpminima.models import build, count_parameters, has_batchnorm
from sharpminima.models.init import initialize


def test_resnet18_has_the_known_parameter_count():
    # the CIFAR ResNet-18 (3x3 stem, widths 64-128-256-512, 10 classes): 11,173,962
    model = build("resnet18")
    assert count_parameters(model) == 11_173_962
    assert has_batchnorm(model)
    convs = [
        m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert convs == [64] * 5 + [128] * 4 + [256] * 4 + [512] * 4


def test_resnet18_nobn_has_no_batchnorm_and_starts_as_its_shortcuts():
    model = build("resnet18-nobn-w16", (3, 32, 32), 10)
    assert not has_batchnorm(model)
    gates = [p for n, p in model.named_parameters() if n.endswith("gate")]
    assert len(gates) == 8 and all(g.detach() == 0 for g in gates)
    initialize(model, "kaiming")  # schemes leave the gates alone
    assert all(g.detach() == 0 for g in gates)


@pytest.mark.parametrize("name", ["resnet18-w16", "resnet18-nobn-w16"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_forward_backward_on_a_tiny_batch(name, shape):
    torch.manual_seed(0)
    model = build(name, shape, 7)
    x, y = torch.rand(4, *shape), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert model(x).shape == (4, 7) and torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    gate_grads = [g for n, g in grads.items() if n.endswith("gate")]
    assert len(gate_grads) == (0 if has_batchnorm(model) else 8)
    assert all(g != 0 for g in gate_grads)  # the zero gates do get trained


def test_nobn_resnet_learns_a_few_steps():
    torch.manual_seed(0)
    model = build("resnet18-nobn-w16", (3, 8, 8), 3)
    y = torch.arange(30) % 3
    x = torch.rand(30, 3, 8, 8)
    x[torch.arange(30), y] += 0.5  # the class is the brightest channel
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
