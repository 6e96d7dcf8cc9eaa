import pytest

from sharpminima.config import PAPER_F1, TrainConfig, regime_batch_size
from sharpminima.errors import ConfigError


def test_regimes():
    assert regime_batch_size("sb", 60_000) == 256
    assert regime_batch_size("lb", 60_000) == 6_000
    assert regime_batch_size("lb", 50_000) == 5_000
    assert regime_batch_size("sb", 100) == 100
    with pytest.raises(ConfigError, match="unknown regime 'xl'"):
        regime_batch_size("xl", 10)


def test_hash_is_identity_and_ignores_defaults():
    a = TrainConfig(net="f1", batch_size=256)
    assert a.hash() == TrainConfig().hash()
    assert a.hash() != a.replace(seed=1).hash()
    assert a.identity() == {"net": "f1", "dataset": "mnist"}
    assert len(a.hash()) == 64


def test_round_trip_through_dict():
    c = PAPER_F1.replace(batch_size=6000, method_args=(("k", 3),), tags=("x",))
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(c.to_dict()).hash() == c.hash()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch size must be a positive integer"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": -1.0}, "learning rate must be a positive number"),
        ({"stop": "never"}, "stop rule must be"),
        ({"patience": 0}, "patience must be a positive integer"),
        ({"train_limit": 0}, "train_limit must be a positive integer"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown config fields"):
        TrainConfig.from_dict({"net": "f1", "colour": "red"})
