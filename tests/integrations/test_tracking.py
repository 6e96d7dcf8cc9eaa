"""Results logged to TensorBoard, Weights & Biases (offline) and MLflow (a local file store)."""

import pytest
import torch
from torch import nn

from sharpminima.integrations import log_results, measure_model


@pytest.fixture(scope="module")
def results():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    return measure_model(
        model, (x, y), [("keskar_sharpness", {"max_iters": 2}), ("hessian_trace", {"num_probes": 4})]
    )


def test_tensorboard(results, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    log_results(results, writer, step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    (scalar,) = events.Scalars("sharpminima/keskar_sharpness.max_iters_2")
    assert scalar.step == 3 and scalar.value == pytest.approx(
        results["keskar_sharpness.max_iters_2"].value, rel=1e-6
    )


def test_weights_and_biases_offline(results, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="sharpminima-test", dir=str(tmp_path), mode="offline")
    try:
        log_results(results, run, step=2)
        assert run.summary["sharpminima/hessian_trace.num_probes_4"] == pytest.approx(
            results["hessian_trace.num_probes_4"].value
        )
    finally:
        run.finish()
    assert list(tmp_path.rglob("*.wandb"))  # the offline run file, ready for `wandb sync`


def test_mlflow_local_store(results, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(f"file://{tmp_path}/mlruns")
    with mlflow.start_run() as run:
        log_results(results, mlflow, step=5)
    history = mlflow.MlflowClient().get_metric_history(
        run.info.run_id, "sharpminima/keskar_sharpness.max_iters_2"
    )
    assert [(m.step, m.value) for m in history] == [
        (5, pytest.approx(results["keskar_sharpness.max_iters_2"].value))
    ]
