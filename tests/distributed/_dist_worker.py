"""Code run inside each process of a 2-process gloo group (spawned by the tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import distributed as dist

CONFIG = {"net": "tiny-mlp", "dataset": "tiny", "batch_size": 75, "epochs": 3, "seed": 3}


def bn_mlp() -> torch.nn.Module:
    """A tiny BatchNorm MLP. The Linear before BatchNorm has no bias: BN cancels a bias, so its
    true gradient is 0 and Adam would turn float rounding noise into lr-sized steps, making a
    comparison of that bias meaningless (in any two float implementations)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 32, bias=False),
        torch.nn.BatchNorm1d(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    )


def reference_setup():
    """The data, config and model factory every process (and the test) uses."""
    from sharpminima.config import TrainConfig
    from sm_testing import make_tiny

    # 250 samples in batches of 75: 75, 75, 75, 25, none of which splits evenly in two.
    return make_tiny(n_train=250, n_test=90, seed=1), TrainConfig(**CONFIG), bn_mlp


def _save(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


def _catch(fn) -> str | None:
    try:
        fn()
    except Exception as exc:  # the test checks type and message
        return f"{type(exc).__name__}: {exc}"
    return None


def main(rank: int, world: int, port: int, out: str) -> None:
    from sharpminima import distributed
    from sharpminima.landscape.objective import ModelObjective, flatten_params
    from sharpminima.landscape.sharded import DistributedObjective, shard_objective
    from sharpminima.landscape.sharpness import keskar_sharpness
    from sharpminima.store import Store
    from sharpminima.train import train
    from sharpminima.train.parallel import DataParallelStep, RankFiles, parallel_evaluate

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out_dir = Path(out)
    data, config, factory = reference_setup()
    report: dict = {"rank": rank, "active": distributed.is_active()}

    # 1. Training: every rank gets the run; only rank 0 holds the store.
    store = Store(out_dir / "store") if rank == 0 else None
    run = train(config, dataset=data, store=store, model_factory=factory)
    _save(out_dir / f"final_{rank}.safetensors", run.model.state_dict())
    report["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in run.history]
    report["run_id"] = run.id

    # 2. Asking again returns the stored run on every rank (broadcast from rank 0).
    again = train(config, dataset=data, store=store, model_factory=factory)
    final = list(run.model.state_dict().values())
    report["again_equal"] = all(
        torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), final, strict=True)
    )

    # 3. Interrupted after epoch 2, then resumed: same weights as uninterrupted.
    store2 = Store(out_dir / "store2") if rank == 0 else None

    def stop_at_2(event: str, info: dict) -> None:
        if event == "epoch" and info["epoch"] == 2:
            raise KeyboardInterrupt

    try:
        train(config, dataset=data, store=store2, model_factory=factory, progress=stop_at_2)
    except KeyboardInterrupt:
        pass
    resumed = train(config, dataset=data, store=store2, model_factory=factory)
    report["resumed_equal"] = all(
        torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), final, strict=True)
    )
    report["resumed_epochs"] = len(resumed.history)

    # 4. Sharded evaluation equals the full evaluation.
    report["eval"] = parallel_evaluate(run.model, data.x_train, data.y_train, 40)

    # 5. Landscape on shards: loss, gradient, HVP and sharpness of the full-data mean.
    objective = shard_objective(run.model, data.x_train, data.y_train, bn_mode="batch", chunk_size=50)
    x0 = flatten_params(run.model)
    v = torch.linspace(-1.0, 1.0, x0.numel())
    value, grad = objective.loss_and_grad(x0)
    _save(
        out_dir / f"landscape_{rank}.safetensors",
        {"x0": x0, "grad": grad, "hvp": objective.hvp(x0, v), "loss": objective.loss(x0).reshape(1)},
    )
    sharp = keskar_sharpness(objective, x0, eps=1e-3, max_iters=5)
    report["sharpness"] = sharp.value
    report["objective_samples"] = objective.num_samples
    report["world_in_settings"] = objective.settings()["world_size"]

    # 6. Errors: raised on every rank, never a hang.
    step = DataParallelStep(lambda m, o, x, y: torch.zeros(()), run.model)
    report["tiny_batch_error"] = _catch(lambda: step(run.model, None, data.x_train[:1], data.y_train[:1]))
    report["wrong_model_error"] = _catch(lambda: step(factory(), None, data.x_train, data.y_train))
    files = RankFiles.open(store, config)
    report["weights_error"] = _catch(lambda: files.weights_of("nosuchrun"))
    report["chunks_error"] = _catch(
        lambda: shard_objective(run.model, data.x_train[:30], data.y_train[:30], chunk_size=50)
    )
    report["rank0_crash_error"] = _catch(lambda: distributed.from_root(lambda: 1 / 0))
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4 + rank))  # sizes differ
    report["dim_error"] = _catch(
        lambda: DistributedObjective(ModelObjective(other, data.x_train[:10], data.y_train[:10]))
    )
    (out_dir / f"report_{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()
