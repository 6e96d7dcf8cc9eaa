"""The Lightning callback inside a real ``Trainer.fit`` on CPU."""

import csv
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from sharpminima.integrations.lightning import SharpnessCallback  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _fit(tmp_path, callbacks, name):
    for logger_name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    x, y = _data()
    module = Module()
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=callbacks,
        logger=pl.loggers.CSVLogger(str(tmp_path), name=name),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
    return module, trainer


def test_callback_measures_every_n_epochs_and_logs_through_the_trainer(tmp_path):
    x, y = _data()
    held = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=24)
    callback = SharpnessCallback(
        held, [("keskar_sharpness", {"max_iters": 2}), "hessian_trace"], every_n_epochs=2
    )
    _, trainer = _fit(tmp_path, [callback], "with")
    assert [epoch for epoch, _ in callback.history] == [2, 3]  # epoch 2, and the end of fit
    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    logged = [r for r in rows if r.get("sharpminima/hessian_trace")]
    assert len(logged) == 2
    assert float(logged[0]["sharpminima/keskar_sharpness.max_iters_2"]) == pytest.approx(
        callback.history[0][1]["keskar_sharpness.max_iters_2"].value
    )


def test_measuring_does_not_change_the_training_trajectory(tmp_path):
    x, y = _data()
    held = [(x[:48], y[:48])]
    plain, _ = _fit(tmp_path, [], "without")
    measured, _ = _fit(
        tmp_path, [SharpnessCallback(held, ["hessian_eigenvalues", "average_sharpness"])], "with"
    )
    for (name, a), b in zip(plain.state_dict().items(), measured.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
