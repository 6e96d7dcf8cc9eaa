"""The reproduction the tests (and their kill-test worker) run."""

from sharpminima.reproduce import get_preset

# The quick preset's experiments on a small synthetic problem, fast enough for CI.
TINY = get_preset(
    "quick", dataset="synthetic", trials=2, sb_epochs=2, lb_epochs=3, sharpness_samples=300,
    hessian_samples=300, trace_probes=4, interp_points=7, interp_samples=300, max_iters=3,
    chunk_size=150, eps=(1e-3, 5e-4),
)
