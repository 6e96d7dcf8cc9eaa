"""Subprocess body for the noise study's kill -9 tests: run, SIGKILL itself midway."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sharpminima.config import TrainConfig  # noqa: E402
from sharpminima.store import Store  # noqa: E402
from sharpminima.study.noise import get_noise_preset, run_noise_study  # noqa: E402
from sharpminima.train import train  # noqa: E402
from sm_testing import make_tiny, small_mlp  # noqa: E402

# Every section, each as small as it goes: 3 batch sizes (and one above the data), 1 lr.
TINY = get_noise_preset(
    "quick",
    net="small_mlp",
    dataset="tiny",
    train_limit=300,
    test_limit=100,
    cb_batch_sizes=(25, 100, 300, 1000),
    cb_lrs=(3e-2,),
    cb_max_steps=12,
    cb_min_epochs=1,
    cb_max_epochs=4,
    loss_target=1.0,
    noise_scale_batch=100,
    temp_batch_sizes=(25, 50),
    temp_ratios=(1e-3,),
    seeds=(0,),
    epochs=1,
    sb=25,
    lb=100,
    lr=0.025,
    lb_epochs=2,
    escape_steps=3,
    measure_samples=60,
    keskar_max_iters=1,
    hessian_max_iters=3,
    noise_examples=16,
    alignment_draws=2,
    measure_every=2,
    num_bootstrap=20,
    num_threads=1,
)

#: A noisy large-batch run (isotropic: two backward passes and a second draw per step).
NOISY = TrainConfig(
    net="small",
    dataset="tiny",
    batch_size=100,
    optimizer="sgd",
    lr=0.05,
    epochs=3,
    num_threads=1,
    method="batch_noise",
    method_args=(("noise_batch_size", 10), ("structure", "isotropic")),
)


def tiny_net(input_shape, num_classes):
    """A registry-style factory (``_noise_worker:tiny_net``) for the CLI test."""
    import math

    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(math.prod(input_shape), 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, num_classes),
    )


def main() -> None:
    store_dir, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save
    counter = {"n": 0}

    def die_at(*_):
        counter["n"] += 1
        if counter["n"] == at:
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "study":  # die at the at-th unit of study progress (a run trained, a measure taken)
        run_noise_study(
            TINY, store=Store(store_dir), dataset=make_tiny(), model_factory=small_mlp, progress=die_at
        )
    else:  # die at the at-th training step of the noisy run

        def progress(event, info):
            if event == "step":
                die_at()

        train(NOISY, dataset=make_tiny(), store=Store(store_dir), model_factory=small_mlp, progress=progress)


if __name__ == "__main__":
    main()
