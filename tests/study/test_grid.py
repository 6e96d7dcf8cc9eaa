import pytest

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.study.grid import FULL, QUICK, expand, get_preset, parse_grid


def test_one_axis_per_flag_and_several_in_one():
    a = parse_grid(["batch_size=256,6000", "lr=1e-3,1e-4", "optimizer=adam,sgd", "seed=0,1"])
    b = parse_grid(["batch_size=256,6000,lr=1e-3,1e-4,optimizer=adam,sgd,seed=0,1"])
    assert a == b == {"batch_size": (256, 6000), "lr": (1e-3, 1e-4), "optimizer": ("adam", "sgd"),
                      "seed": (0, 1)}
    assert list(a) == ["batch_size", "lr", "optimizer", "seed"]
    assert parse_grid([" lr = 0.1 , 0.01 "]) == {"lr": (0.1, 0.01)}


def test_expand_is_the_cartesian_product_applied_to_the_base():
    base = TrainConfig(net="f1", epochs=3, train_limit=500)
    points = expand(base, {"batch_size": (50, 100), "seed": (0, 1, 2)})
    assert len(points) == 6
    assert [p.hparams for p in points[:2]] == [{"batch_size": 50, "seed": 0}, {"batch_size": 50, "seed": 1}]
    assert points[-1].config == base.replace(batch_size=100, seed=2)
    assert len({p.config.hash() for p in points}) == 6


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([""], "empty --grid entry"),
        (["256,6000"], "does not start with name="),
        (["depth=1,2"], "cannot vary 'depth'"),
        (["lr=1e-3", "lr=1e-4"], "given twice"),
        (["lr="], "empty value"),
        (["lr=1e-3,,1e-4"], "empty value"),
        (["lr=fast"], "'fast' is not a number"),
        (["lr=-1"], "must be positive"),
        (["batch_size=0"], "must be a positive integer"),
        (["batch_size=2.5"], "'2.5' is not a number"),
        (["optimizer=lion"], "is not an optimizer"),
        (["seed=0,1,0"], "lists '0' twice"),
    ],
)
def test_grid_errors_are_one_line_config_errors(specs, message):
    with pytest.raises(ConfigError, match=message) as exc:
        parse_grid(specs)
    assert "\n" not in str(exc.value)


def test_presets_and_their_errors():
    assert len(QUICK.points()) == 8 and len(FULL.points()) == 72
    assert all(p.config.train_limit == QUICK.train_limit for p in QUICK.points())
    assert get_preset("quick", epochs=2, train_limit=None).epochs == 2  # None leaves a field as it is
    with pytest.raises(ConfigError, match="unknown study preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="unknown measure"):
        get_preset("quick", measures=("keskar_full", "vibes"))
    with pytest.raises(ConfigError, match="measure samples"):
        get_preset("quick", measure_samples=1)
    with pytest.raises(ConfigError, match="threshold must be positive"):
        get_preset("quick", loss_threshold=0.0)
    with pytest.raises(ConfigError, match="BatchNorm mode"):
        get_preset("quick", bn_modes=("train",))
    with pytest.raises(ConfigError, match="the grid is empty"):
        expand(TrainConfig(), {})
