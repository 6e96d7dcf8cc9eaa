"""Subprocess body for the kill -9 resume tests: train, optionally SIGKILL itself midway."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharpminima.config import TrainConfig  # noqa: E402
from sharpminima.store import Store  # noqa: E402
from sharpminima.train import train  # noqa: E402
from sm_testing import make_tiny, small_mlp  # noqa: E402

CONFIG = TrainConfig(net="small", dataset="tiny", batch_size=50, epochs=6, save_every_epoch=True)
# batch 50, 50, 100, 100, 200, 200 (12, 12, 6, 6, 3, 3 steps), lr warm-up, augmentation
SCHEDULED = CONFIG.replace(
    batch_schedule="step", batch_schedule_args=(("factor", 2), ("every", 2)),
    lr_schedule="linear", lr_schedule_args=(("base_batch", 50), ("warmup_steps", 20)),
    augment="paper", init="orthogonal",
)
# the adaptive batch rule reads the previous epoch's batch size back from the store
ADAPTIVE = CONFIG.replace(
    batch_schedule="adaptive",
    batch_schedule_args=(("batch_small", 8), ("batch_big", 32), ("repeats", 2), ("scale", 20.0)),
)
CONFIGS = {"plain": CONFIG, "scheduled": SCHEDULED, "adaptive": ADAPTIVE}


def main() -> None:
    store_dir, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = CONFIGS[sys.argv[4] if len(sys.argv) > 4 else "plain"]
    counter = {"step": 0, "replace": 0}

    def progress(event, info):
        if event == "step":
            counter["step"] += 1
            if mode == "step" and counter["step"] == at:
                os.kill(os.getpid(), signal.SIGKILL)

    if mode == "replace":  # die inside the n-th atomic rename of a checkpoint file
        real_replace = os.replace

        def dying_replace(src, dst):
            counter["replace"] += 1
            if counter["replace"] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)

        os.replace = dying_replace
    train(config, dataset=make_tiny(), store=Store(store_dir), model_factory=small_mlp,
          progress=progress)


if __name__ == "__main__":
    main()
