"""CUDA paths against their CPU references (skipped without a GPU; run by benchmarks/gpu_check.sh).

Tolerances: the CUDA fast path trains with TF32 products (10-bit mantissa inputs, float32
accumulation), so a training run is compared with its CPU twin to 2% of the loss; the
landscape tests use an MLP, whose products run in float32 after training (training restores
PyTorch's default matmul precision), so they are compared with the CPU at float32 rounding
of sums over many terms (1e-4 relative). Networks here have no dropout where a CUDA run is
compared with a CPU one: the two devices draw dropout masks from different generators.
"""

import pytest
import torch
from torch import nn

from sharpminima.config import TrainConfig
from sharpminima.landscape import ModelObjective, flatten_params
from sharpminima.landscape.interpolate import interpolate
from sharpminima.train import train
from sm_testing import make_tiny, small_mlp

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_step_loop_has_no_host_synchronisation():
    """Steps 2..N of every epoch run under sync debug mode 'error': any .item(), D2H copy or
    synchronising call inside the step loop raises."""
    data = make_tiny(n_train=640, shape=(3, 8, 8))
    cfg = TrainConfig(net="c1", dataset="tiny", batch_size=64, epochs=2, optimizer="adam")
    steps_per_epoch = 10
    seen = {"steps": 0, "checked": 0}

    def progress(event, info):
        if event == "step":
            seen["steps"] += 1
            in_epoch = seen["steps"] % steps_per_epoch
            if in_epoch == 1:  # the epoch's first step is done: the rest must not synchronise
                torch.cuda.set_sync_debug_mode("error")
            elif in_epoch == 0:  # the last step: evaluation (which syncs) comes next
                torch.cuda.set_sync_debug_mode("default")
                seen["checked"] += steps_per_epoch - 1

    try:
        run = train(cfg, dataset=data, device="cuda", progress=progress)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert run.status == "done"
    assert seen["checked"] == 2 * (steps_per_epoch - 1)


def _conv_net():
    """A small conv + BatchNorm2d net without dropout (channels_last and TF32 convolutions on CUDA)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 4))


def test_cuda_training_matches_cpu_within_tf32():
    data = make_tiny(shape=(3, 8, 8))
    cfg = TrainConfig(net="c1", dataset="tiny", batch_size=64, epochs=2, optimizer="sgd", lr=0.05)
    cpu = train(cfg, dataset=data, device="cpu", model_factory=_conv_net)
    gpu = train(cfg, dataset=data, device="cuda", model_factory=_conv_net)
    assert gpu.final["train_loss"] == pytest.approx(cpu.final["train_loss"], rel=2e-2)
    assert torch.get_float32_matmul_precision() == "highest"  # the fast path's flags were restored


def _objective(device):
    torch.manual_seed(0)
    data = make_tiny()
    model = small_mlp().to(device)
    return ModelObjective(model, data.x_train.to(device), data.y_train.to(device), bn_mode="batch",
                          chunk_size=200), flatten_params(model)


def test_kept_graph_hvp_matches_cpu():
    (obj_c, x_c), (obj_g, x_g) = _objective("cpu"), _objective("cuda")
    v = torch.randn(x_c.numel(), generator=torch.Generator().manual_seed(1))
    ref = obj_c.hvp(x_c, v)
    hvp = obj_g.hvp_at(x_g)
    try:
        got = hvp(v.to("cuda")).cpu()
        again = hvp(v.to("cuda")).cpu()
    finally:
        hvp.release()
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert torch.equal(got, again)  # one kept graph, the same product twice


def test_batched_interpolation_matches_one_at_a_time():
    obj, xa = _objective("cuda")
    xb = xa + 0.1 * torch.randn(xa.numel(), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    alphas = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64)
    one = interpolate(obj, xa, xb, alphas=alphas, batched=False)
    many = interpolate(obj, xa, xb, alphas=alphas, batched=True)
    assert torch.allclose(torch.as_tensor(many.train_loss), torch.as_tensor(one.train_loss), rtol=1e-4)


def _dropout_conv_net():
    """Dropout after a convolution (4-D, channels_last on CUDA) and in the classifier (2-D)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, 4))


def test_vectorised_dropout_masks_equal_the_sequential_runs_on_cuda():
    """Same masks: weights agree to TF32 rounding (other masks would differ at ~1e-1)."""
    from sharpminima.train.vectorized import train_vectorized

    data = make_tiny(shape=(3, 8, 8))
    cfg = TrainConfig(net="c1", dataset="tiny", batch_size=100, epochs=2, optimizer="sgd", lr=0.05)
    vec = train_vectorized(cfg, [0, 1], dataset=data, device="cuda", model_factory=_dropout_conv_net)
    seq = [train(cfg.replace(seed=s), dataset=data, device="cuda", model_factory=_dropout_conv_net)
           for s in (0, 1)]
    for v, s in zip(vec, seq, strict=True):
        for name, ref in s.model.state_dict().items():
            if ref.is_floating_point():
                got = v.model.state_dict()[name]
                assert float((got - ref).abs().max()) <= 1e-2 * float(ref.abs().max()) + 1e-6, name
