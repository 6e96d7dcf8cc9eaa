"""Loss adapters: means, weights and Gauss-Newton forms against direct computations."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sharpminima.errors import ConfigError
from sharpminima.factories import import_object
from sharpminima.losses import (
    IGNORE_INDEX,
    CallableLoss,
    CrossEntropy,
    MeanSquaredError,
    ModelOutputLoss,
    OutputLoss,
    resolve_loss,
)

D = torch.float64


def _check_output_hvp(loss, outputs, batch):
    """output_hvp against the dense Hessian of the batch's mean loss in the outputs."""

    def mean_of(out):
        model = _Fixed(out)
        return loss(model, batch)

    flat = outputs.reshape(-1)
    h = torch.autograd.functional.hessian(lambda o: mean_of(o.reshape(outputs.shape)), flat)
    v = torch.randn(flat.shape, dtype=D, generator=torch.Generator().manual_seed(1))
    got = loss.output_hvp(outputs, batch, v.reshape(outputs.shape)).reshape(-1)
    torch.testing.assert_close(got, h @ v, rtol=1e-10, atol=1e-12)


class _Fixed(nn.Module):
    """A "model" whose output is given (to differentiate a loss in its outputs)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, *args, **kwargs):
        return self.out


def test_cross_entropy_classification():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, dtype=D, generator=g)
    y = torch.randint(0, 3, (5,), generator=g)
    ce = CrossEntropy()
    model = _Fixed(logits)
    assert ce(model, (None, y)) == F.cross_entropy(logits, y) and ce.count((None, y)) == 5
    mean, correct = ce.metrics(model, (None, y))
    assert int(correct) == int((logits.argmax(1) == y).sum())
    total, _ = ce.loss_sum(model, (None, y))
    torch.testing.assert_close(total, F.cross_entropy(logits, y, reduction="sum"))
    _check_output_hvp(ce, logits, (None, y))


def test_cross_entropy_per_token_ignores_and_counts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, dtype=D, generator=g)
    y = torch.randint(0, 6, (2, 4), generator=g)
    y[0, :2] = IGNORE_INDEX
    ce = CrossEntropy()
    keep = y != IGNORE_INDEX
    ref = F.cross_entropy(logits[keep], y[keep])
    assert ce.count((None, y)) == 6
    torch.testing.assert_close(ce(_Fixed(logits), (None, y)), ref)
    _, correct = ce.metrics(_Fixed(logits), (None, y))
    assert int(correct) == int(((logits.argmax(-1) == y) & keep).sum())
    _check_output_hvp(ce, logits, (None, y))


def test_mean_squared_error():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(4, 2, dtype=D, generator=g)
    y = torch.randn(4, 2, dtype=D, generator=g)
    mse = MeanSquaredError()
    torch.testing.assert_close(mse(_Fixed(out), (None, y)), ((out - y) ** 2).mean())
    assert mse.count((None, y)) == 4 and mse.metrics(_Fixed(out), (None, y))[1] is None
    _check_output_hvp(mse, out, (None, y))


def test_callable_loss_and_its_weight():
    def fn(model, batch):
        return model(batch["x"]).mean()

    loss = CallableLoss(fn)
    batch = {"x": torch.ones(3, 2), "mask": torch.ones(3, 7)}
    assert loss.count(batch) == 3 and "fn" in loss.name
    weighted = CallableLoss(fn, weight=lambda b: b["mask"].sum())
    assert weighted.count(batch) == 21.0
    with pytest.raises(ConfigError, match="must return a positive number"):
        CallableLoss(fn, weight=lambda b: 0).count(batch)
    with pytest.raises(ConfigError, match="loss must be a callable"):
        CallableLoss(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Gauss-Newton matrix is defined here"):
        loss.outputs(nn.Identity(), batch)


def test_resolve_loss():
    assert isinstance(resolve_loss(), CrossEntropy)
    assert isinstance(resolve_loss(example={"input_ids": torch.ones(1)}), ModelOutputLoss)
    assert isinstance(resolve_loss("mse"), MeanSquaredError)
    assert isinstance(resolve_loss(loss_fn=F.cross_entropy), CrossEntropy)
    assert isinstance(resolve_loss(loss_fn=F.mse_loss), MeanSquaredError)
    assert isinstance(resolve_loss(loss_fn=F.nll_loss), OutputLoss)
    assert isinstance(resolve_loss("sm_testing:mean_abs_loss"), CallableLoss)
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        resolve_loss("hinge")
    with pytest.raises(ConfigError, match="give either loss"):
        resolve_loss("mse", loss_fn=F.mse_loss)
    with pytest.raises(ConfigError, match="loss must be a name"):
        resolve_loss(3)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nomodule_xyz:fn", "cannot import loss 'nomodule_xyz:fn'"),
        ("os:no_such_thing", "module 'os' has no attribute"),
        (":", "must be written module:attribute"),
        ("os", "must be written module:attribute"),
    ],
)
def test_import_object_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        import_object(spec, "loss")


def test_import_object_reports_a_module_that_fails(tmp_path, monkeypatch):
    (tmp_path / "broken_mod.py").write_text("def f(:\n")
    (tmp_path / "raising_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="SyntaxError"):
        import_object("broken_mod:f", "loss")
    with pytest.raises(ConfigError, match="RuntimeError: boom"):
        import_object("raising_mod:f", "loss")


def test_model_output_loss_requires_dict_batches_with_labels():
    loss = ModelOutputLoss()
    with pytest.raises(ConfigError, match="needs dict batches"):
        loss.count((torch.ones(2), torch.ones(2)))
    with pytest.raises(ConfigError, match="has no 'labels'"):
        loss.count({"input_ids": torch.ones(2, 3)})
    with pytest.raises(ConfigError, match="per must be"):
        ModelOutputLoss(per="word")  # type: ignore[arg-type]
