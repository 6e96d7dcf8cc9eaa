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


def main() -> None:
    store_dir, mode, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
    train(CONFIG, dataset=make_tiny(), store=Store(store_dir), model_factory=small_mlp,
          progress=progress)


if __name__ == "__main__":
    main()
