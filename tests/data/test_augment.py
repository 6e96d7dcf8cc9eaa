import pytest
import torch

from sharpminima.config import TrainConfig
from sharpminima.data.augment import Augment, make_augment
from sharpminima.errors import ConfigError
from sharpminima.train import train
from sm_testing import make_tiny, small_mlp

SHAPE = (3, 12, 16)


def _images(n=32, seed=0):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _paper(**args):
    return make_augment("paper", tuple(args.items()), SHAPE)


def test_zero_strength_and_none_are_exact_identities():
    x = _images()
    for aug in (
        _paper(strength=0.0),
        _paper(flip=0.0, rotate=0.0, translate=0.0),
        make_augment("none", (), (5,)),
    ):
        assert aug.for_epoch(1)(x) is x
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(_paper(strength=0.0).apply(x, gen), x)


def test_flips_flip_exactly_and_with_the_stated_probability():
    x = _images(2000)
    out = _paper(flip=0.5, rotate=0.0, translate=0.0).for_epoch(3)(x)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all())  # each sample is exactly one of the two
    assert abs(flipped.float().mean().item() - 0.5) < 4 * (0.25 / 2000) ** 0.5
    always = _paper(flip=1.0, rotate=0.0, translate=0.0).for_epoch(3)(x)
    assert torch.equal(always, x.flip(-1))


def test_pure_translation_is_bilinear_sampling_at_the_shifted_point():
    aug = Augment(translate=0.25)
    x = _images(1)
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(1, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = aug.apply(x, gen)
    sx = (2 * u[0, 2] - 1) * 0.25 * 16  # pixels, +: sample from the right
    sy = (2 * u[0, 3] - 1) * 0.25 * 12
    # bilinear sampling at p + s: compare against manual interpolation at one interior pixel
    i, j = 6, 8
    fx, fy = j + float(sx), i + float(sy)
    x0, y0 = int(torch.floor(torch.tensor(fx))), int(torch.floor(torch.tensor(fy)))
    ax, ay = fx - x0, fy - y0
    img = x[0]
    want = (
        (1 - ax) * (1 - ay) * img[:, y0, x0]
        + ax * (1 - ay) * img[:, y0, x0 + 1]
        + (1 - ax) * ay * img[:, y0 + 1, x0]
        + ax * ay * img[:, y0 + 1, x0 + 1]
    )
    assert torch.allclose(out[0, :, i, j], want, atol=1e-5)


def test_rotation_is_a_true_rotation_on_non_square_images():
    h, w = 21, 41
    x = torch.zeros(1, 1, h, w)
    q = torch.tensor([14.0, 4.0], dtype=torch.float64)  # (x, y) of a bright blob from the centre
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            x[0, 0, int(cy + q[1]) + dy, int(cx + q[0]) + dx] = 1.0
    u = torch.rand(1, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = (2 * u[0, 1] - 1) * torch.pi / 18  # the angle the augmentation draws
    out = Augment(rotate=10.0).apply(x, torch.Generator().manual_seed(1))[0, 0]
    # output p shows input R p, so the blob moves to R^-1 q
    rot_inv = torch.tensor([[torch.cos(a), torch.sin(a)], [-torch.sin(a), torch.cos(a)]])
    want = rot_inv @ q
    ys, xs = torch.meshgrid(torch.arange(h) - cy, torch.arange(w) - cx, indexing="ij")
    got = torch.stack([(out * xs).sum(), (out * ys).sum()]) / out.sum()  # centre of mass
    assert abs(float(a)) > 0.05  # the seed draws a visible rotation
    assert torch.allclose(got.double(), want, atol=0.3)


def test_rotation_by_the_largest_angle_keeps_the_centre():
    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 16, 16] = 1.0  # the centre pixel maps to itself under any rotation
    out = Augment(rotate=10.0).apply(x, torch.Generator().manual_seed(0))
    assert out[0, 0, 16, 16] == pytest.approx(1.0, abs=0.05)


def test_labels_untouched_values_within_bounds_and_stats_close(tiny):
    x = _images(512)
    out = _paper().for_epoch(7)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6
    assert abs(out.mean().item() - x.mean().item()) < 0.02  # uniform images: border fill keeps the mean
    zeros = _paper(fill="zeros").for_epoch(7)(x)
    assert zeros.min() >= 0 and zeros.mean() < x.mean()  # zero fill darkens
    run = train(
        TrainConfig(net="small", dataset="tiny", batch_size=100, epochs=1, augment="paper"),
        dataset=tiny,
        model_factory=small_mlp,
    )
    assert run.status == "done" and torch.equal(tiny.y_train, make_tiny().y_train)


def test_draws_are_a_function_of_the_epoch_seed():
    x = _images()
    aug = _paper()
    first, again, other = aug.for_epoch(5), aug.for_epoch(5), aug.for_epoch(6)
    a1, a2 = first(x), first(x)
    assert torch.equal(a1, again(x)) and torch.equal(a2, again(x))
    assert not torch.equal(a1, a2) and not torch.equal(a1, other(x))


def test_augmented_training_changes_the_result_and_is_reproducible(tiny):
    cfg = TrainConfig(net="small", dataset="tiny", batch_size=100, epochs=2)
    plain = train(cfg, dataset=tiny, model_factory=small_mlp)
    a = train(cfg.replace(augment="paper"), dataset=tiny, model_factory=small_mlp)
    b = train(cfg.replace(augment="paper"), dataset=tiny, model_factory=small_mlp)
    same = [
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    ]
    assert all(same)
    assert not torch.equal(a.model.state_dict()["1.weight"], plain.model.state_dict()["1.weight"])


@pytest.mark.parametrize(
    ("name", "args", "shape", "match"),
    [
        ("mixup", (), SHAPE, "unknown augmentation 'mixup'; choose one of none, paper"),
        ("paper", (("zoom", 0.1),), SHAPE, r"unknown option\(s\) \['zoom'\] for augmentation 'paper'"),
        ("none", (("flip", 0.5),), SHAPE, r"unknown option\(s\) \['flip'\] for augmentation 'none'"),
        ("paper", (), (360,), r"needs image data \(C, H, W\), got samples of shape \(360,\)"),
        ("paper", (("rotate", -1.0),), SHAPE, "option 'rotate' must be a number >= 0, got -1.0"),
        ("paper", (("fill", "reflect"),), SHAPE, "option 'fill' must be 'border' or 'zeros'"),
        ("paper", (("strength", 3.0),), SHAPE, "flip probability 1.5 exceeds 1"),
    ],
)
def test_augment_errors(name, args, shape, match):
    with pytest.raises(ConfigError, match=match):
        make_augment(name, args, shape)


def test_apply_needs_image_batches():
    with pytest.raises(ConfigError, match=r"needs image batches \(B, C, H, W\), got shape \(4, 10\)"):
        Augment(flip=0.5).apply(torch.zeros(4, 10), torch.Generator())


def test_non_image_dataset_is_refused_by_train():
    flat = make_tiny(shape=(64,))
    with pytest.raises(ConfigError, match="needs image data"):
        train(
            TrainConfig(net="small", dataset="tiny", augment="paper"), dataset=flat, model_factory=small_mlp
        )
