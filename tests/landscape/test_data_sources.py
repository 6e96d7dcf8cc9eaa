"""Every measure on every data source: a DataLoader, a list of batches, in-memory tensors.

The loader path must give the tensor path's numbers (the same batches, the same
arithmetic, to float rounding), and the objective's normalisation must hold for losses other than
cross-entropy (a regression with MSE against a dense float64 Hessian).
"""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sharpminima.errors import ConfigError, DataError
from sharpminima.landscape import Landscape, ModelObjective, all_measures, compute, flatten_params
from sharpminima.landscape.operators import GGNOperator

DTYPE = torch.float64


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def tiny_resnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        _Block(4),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).double()


def _images(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g, dtype=DTYPE), torch.randint(0, 3, (n,), generator=g)


#: Small settings so that every measure runs in well under a second here.
SMALL = {
    "keskar_sharpness": {"max_iters": 3},
    "keskar_sharpness_multistart": {"max_iters": 2, "num_starts": 2},
    "adaptive_sharpness": {"max_iters": 2},
    "epsilon_study": {"eps": (1e-3, 1e-2), "max_iters": 2},
    "hessian_eigenvalues": {"max_iters": 6},
    "ggn_eigenvalues": {"max_iters": 6},
    "hessian_trace": {"num_probes": 3},
    "ggn_trace": {"num_probes": 3},
    "spectral_density": {"num_probes": 2, "lanczos_steps": 4},
    "subspace_ritz_values": {"p": 3},
    "layer_eigenvalues": {"max_iters": 4},
    "layer_traces": {"num_probes": 2},
    "average_sharpness": {"num_draws": 3},
    "loss_surface": {"num_points": 3},
    "gradient_noise_scale": {"num_examples": 24, "num_groups": 3},
    "pacbayes_flatness": {"num_draws": 1, "steps": 2},
    "interpolation": {"num_points": 3},
    "relative_flatness": {"num_probes": 3},
}


def _inputs(model, x0):
    other = flatten_params(tiny_resnet(seed=1))
    return {"x0": x0, "other": other}


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
def test_every_measure_gives_the_tensor_paths_number_from_a_loader(bn_mode):
    model = tiny_resnet()
    x_in, y_in = _images()
    x = flatten_params(model)
    x0 = flatten_params(tiny_resnet(seed=2))
    tensors = ModelObjective(model, x_in, y_in, bn_mode=bn_mode, chunk_size=16)
    loader = ModelObjective(model, DataLoader(TensorDataset(x_in, y_in), batch_size=16), bn_mode=bn_mode)
    listed = ModelObjective(
        model, [(x_in[i : i + 16], y_in[i : i + 16]) for i in range(0, 48, 16)], bn_mode=bn_mode
    )
    names = [m.name for m in all_measures()]
    assert len(names) >= 20
    for name in names:
        if name == "gradient_noise_scale" and bn_mode == "batch":
            continue  # needs running statistics: the registry fixes eval (tested elsewhere)
        params = SMALL.get(name, {})
        ref = compute(name, tensors, x, params, model=model, **_inputs(model, x0))
        for obj in (loader, listed):
            got = compute(name, obj, x, params, model=model, **_inputs(model, x0))
            # the same batches: equal to float rounding (gathered per-example batches are cut
            # where the loader's batches end, so their vmap-ed products round differently)
            assert got.value == pytest.approx(ref.value, rel=1e-10, abs=1e-14, nan_ok=True), name


def _regression(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DTYPE)
    y = torch.randn(n, 2, generator=g, dtype=DTYPE)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return model, x, y


def _dense(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def f(flat):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return ((torch.func.functional_call(model, params, (x,)) - y) ** 2).mean()

    x0 = flatten_params(model)
    return f, x0, torch.autograd.functional.hessian(f, x0)


def test_mse_regression_from_a_loader_against_a_dense_hessian():
    model, x_in, y_in = _regression()
    f, x0, hessian = _dense(model, x_in, y_in)
    loader = DataLoader(TensorDataset(x_in, y_in), batch_size=16)  # batches of 16, 16 and 8
    land = Landscape(model, loader, loss="mse")
    assert land.loss() == pytest.approx(float(f(x0)), rel=1e-12)
    assland = land.loss_and_accuracy()
    assert math.isnan(assland[1])  # accuracy is not defined for a regression
    v = torch.randn(x0.numel(), dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(land.objective.hvp(x0, v), hessian @ v, rtol=1e-10, atol=1e-12)
    top = float(torch.linalg.eigvalsh(hessian)[-1])
    assert land.top_eigenvalues(tol=1e-10).value == pytest.approx(top, rel=1e-8)
    assert land.trace(num_probes=2000, seed=0).value == pytest.approx(float(hessian.trace()), rel=0.05)


def test_mse_gauss_newton_against_its_dense_form():
    model, x_in, y_in = _regression()
    _, x0, _ = _dense(model, x_in, y_in)
    land = Landscape(model, DataLoader(TensorDataset(x_in, y_in), batch_size=16), loss="mse")
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def outputs(flat):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
        return torch.func.functional_call(model, params, (x_in,)).reshape(-1)

    jac = torch.autograd.functional.jacobian(outputs, x0)  # (N * 2, n)
    ggn = 2.0 / y_in.numel() * jac.T @ jac
    op = GGNOperator(land.objective, x0)
    eye = torch.eye(x0.numel(), dtype=DTYPE)
    torch.testing.assert_close(op @ eye, ggn, rtol=1e-9, atol=1e-12)


def test_a_user_loss_function_of_model_and_batch():
    model, x_in, y_in = _regression()
    f, x0, hessian = _dense(model, x_in, y_in)

    def loss(m, batch):  # any function of the model and a batch: here a dict batch
        return ((m(batch["features"]) - batch["target"]) ** 2).mean()

    batches = [{"features": x_in[i : i + 10], "target": y_in[i : i + 10]} for i in range(0, 40, 10)]
    land = Landscape(model, batches, loss=loss)
    assert land.loss() == pytest.approx(float(f(x0)), rel=1e-12)
    assert land.objective.settings()["loss"].endswith("loss")
    v = torch.ones(x0.numel(), dtype=DTYPE)
    torch.testing.assert_close(land.objective.hvp(x0, v), hessian @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="Gauss-Newton matrix is defined here"):
        land.top_eigenvalues(curvature="ggn")


def test_frozen_parameters_are_left_out():
    model, x_in, y_in = _regression()
    model[0].weight.requires_grad_(False)
    land = Landscape(model, x_in, y_in, loss="mse")
    assert land.objective.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert "0.weight" not in land.objective.names


def test_bad_input_gets_one_clear_error():
    model, x_in, y_in = _regression()
    with pytest.raises(DataError, match="yielded no batch"):
        Landscape(model, [], loss="mse").loss()
    with pytest.raises(ConfigError, match="on the first batch failed"):
        Landscape(model, [(x_in[:, :2], y_in)], loss="mse").loss()  # wrong input width
    with pytest.raises(ConfigError, match="reads batches of \\(inputs, targets\\)"):
        Landscape(model, [x_in], loss="mse").loss()
    with pytest.raises(ConfigError, match="scalar floating tensor"):
        Landscape(model, [(x_in, y_in)], loss=lambda m, b: (m(b[0]) - b[1]) ** 2).loss()
    with pytest.raises(ConfigError, match="the loss is nan on the first batch"):
        Landscape(model, [(x_in, y_in)], loss=lambda m, b: m(b[0]).sum() * float("nan")).loss()
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module"):
        ModelObjective("not a model", x_in, y_in)  # type: ignore[arg-type]


def test_data_on_another_device_than_the_model_is_moved_batch_by_batch():
    # batches are moved to the model's device one at a time (here both CPU: a no-op), so
    # data kept elsewhere is not an error
    model, x_in, y_in = _regression()
    loader = DataLoader(TensorDataset(x_in, y_in), batch_size=16, pin_memory=False)
    land = Landscape(model, loader, loss="mse")
    assert math.isfinite(land.loss())
