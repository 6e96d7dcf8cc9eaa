import pytest
import torch

from sharpminima.errors import ConfigError
from sharpminima.models import NETS, build, count_parameters, has_batchnorm

# Exact counts of our implementation on the paper's datasets; F1 ~1.46 M and C2 ~15.0 M
# as in the paper.
EXPECTED = {
    "f1": 1_462_794,
    "f2": 2_780_085,
    "c1": 1_757_834,
    "c2": 14_991_946,
    "c3": 1_775_204,
    "c4": 15_038_116,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts_are_pinned(name):
    assert count_parameters(build(name)) == EXPECTED[name]


def test_paper_sizes():
    assert round(count_parameters(build("f1")) / 1e6, 2) == 1.46
    assert round(count_parameters(build("c2")) / 1e6, 1) == 15.0


@pytest.mark.parametrize("name", ["c1", "c2", "c3", "c4"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 20, 24)])
def test_conv_nets_take_any_image_shape(name, shape):
    model = build(name, shape, 7).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_c1_uses_stride_one_convs_with_pool_downsampling():
    model = build("c1")
    first_dense = model.classifier[0]
    assert first_dense.in_features == 64 * 8 * 8
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.stride == (1, 1) and c.kernel_size == (5, 5) for c in convs)


def test_c2_has_vgg16_conv_layout_and_dropouts():
    model = build("c2")
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    drops = [m.p for m in model.features if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.3] + [0.4] * 7


def test_f1_structure():
    model = build("f1")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [512] * 5 + [10]
    assert has_batchnorm(model)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_registry_covers_the_paper():
    paper = {"c1", "c2", "c3", "c4", "f1", "f2"}
    resnets = {"resnet18", "resnet18-nobn", "resnet18-w16", "resnet18-nobn-w16"}
    assert set(NETS) == paper | resnets


def test_unknown_network():
    with pytest.raises(ConfigError, match="unknown network 'f9'"):
        build("f9")


def test_conv_net_needs_image_shape():
    with pytest.raises(ConfigError, match="needs image inputs"):
        build("c1", (784,), 10)


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "def tiny(shape, classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, classes))\n"
        "def bad(shape, classes):\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert count_parameters(build("mynets:tiny", (4,), 3)) == 15
    with pytest.raises(ConfigError, match="returned a int; it must return a torch.nn.Module"):
        build("mynets:bad", (4,), 3)
    with pytest.raises(ConfigError, match="module 'mynets' has no attribute 'missing'"):
        build("mynets:missing", (4,), 3)
    with pytest.raises(ConfigError, match="cannot import network factory 'nosuchmodule_q:f'"):
        build("nosuchmodule_q:f", (4,), 3)
