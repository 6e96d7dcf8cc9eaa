import numpy as np
import pytest
import torch

from sharpminima.data import load, synthetic
from sharpminima.errors import DataError


def test_same_seed_gives_identical_tensors():
    a, b = synthetic(200, 100, seed=3), synthetic(200, 100, seed=3)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_different_seeds_differ():
    a, b = synthetic(50, 10, seed=0), synthetic(50, 10, seed=1)
    assert not torch.equal(a.x_train, b.x_train)


def test_test_set_does_not_depend_on_num_train():
    assert torch.equal(synthetic(10, 30).x_test, synthetic(500, 30).x_test)


@pytest.mark.parametrize("shape", [(784,), (1, 28, 28), (3, 32, 32)])
def test_shapes_dtypes_ranges(shape):
    ds = synthetic(64, 32, input_shape=shape, num_classes=7)
    assert ds.x_train.shape == (64, *shape) and ds.x_test.shape == (32, *shape)
    assert ds.input_shape == shape
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 7 and ds.num_classes == 7
    assert ds.name == "synthetic" and ds.meta["seed"] == 0


def test_default_is_mnist_like():
    ds = synthetic(10, 5)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10


def test_learnable_and_noise_controls_difficulty():
    def centroid_accuracy(noise):
        ds = synthetic(2000, 1000, noise=noise, input_shape=(784,))
        x, y, x_test = ds.x_train.numpy(), ds.y_train.numpy(), ds.x_test.numpy()
        onehot = np.eye(10, dtype=np.float32)[y]  # (N, 10)
        centroids = (onehot.T @ x) / onehot.sum(0)[:, None]  # (10, d)
        dist = (x_test**2).sum(1)[:, None] - 2 * x_test @ centroids.T + (centroids**2).sum(1)
        return float((dist.argmin(1) == ds.y_test.numpy()).mean())

    easy, hard = centroid_accuracy(0.5), centroid_accuracy(2.0)
    assert easy > 0.95 and 0.3 < hard < easy  # chance is 0.1


def test_load_passes_options_through_and_limits():
    ds = load("synthetic", num_train=40, num_test=20, seed=5, train_limit=10, test_limit=5)
    assert ds.num_train == 10 and ds.num_test == 5
    assert torch.equal(ds.x_train, synthetic(40, 20, seed=5).x_train[:10])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"num_train": 0},
            r"num_train, num_test and latent_dim must be integers >= 1, got 0, 10, 16",
        ),
        ({"num_test": 2.5}, r"must be integers >= 1"),
        ({"latent_dim": 0}, r"must be integers >= 1"),
        ({"input_shape": (1, 0, 28)}, r"input_shape must be positive integers .* got \(1, 0, 28\)"),
        ({"input_shape": ()}, r"input_shape must be positive integers"),
        ({"num_classes": 1}, r"num_classes must be an integer >= 2, got 1"),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"noise": -0.1}, r"noise must be a finite number >= 0, got -0\.1"),
        ({"noise": float("nan")}, r"noise must be a finite number >= 0, got nan"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"num_train": 10, "num_test": 10, **kwargs}
    with pytest.raises(DataError, match=rf"^synthetic: (.* )?{message}"):
        synthetic(**args)
