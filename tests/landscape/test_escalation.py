"""The Keskar maximiser at stationary starts: escalation to more starts, against closed forms.

At a stationary point the gradient gives L-BFGS-B no direction, so the paper's search from
``y = 0`` reports 0 whatever the box holds. The default escalates; each case here has a
box maximum known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from sharpminima.errors import ConfigError
from sharpminima.landscape import registry
from sharpminima.landscape.flatness import adaptive_sharpness
from sharpminima.landscape.sharpness import keskar_sharpness, keskar_sharpness_multistart

N = 40


@pytest.fixture
def centre() -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.fixture
def curvatures() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.rand(N, generator=g, dtype=torch.float64) * 2.0 + 0.25


def halfwidth(c: torch.Tensor, eps: float) -> torch.Tensor:
    return eps * (c.abs() + 1.0)


def metric(fmax: float, f0: float) -> float:
    return 100.0 * (fmax - f0) / (1.0 + f0)


@pytest.mark.parametrize("eps", [1e-3, 5e-4, 1e-2])
def test_a_bowl_started_at_its_minimum_follows_the_eps_squared_law(centre, curvatures, eps):
    def bowl(x):
        return 0.5 * (curvatures * (x - centre) ** 2).sum()

    r = keskar_sharpness(bowl, centre.clone(), eps=eps)
    w = halfwidth(centre, eps)
    expected = metric(float(0.5 * (curvatures * w**2).sum()), 0.0)
    assert r.value == pytest.approx(expected, rel=1e-9)
    assert r.search == "lbfgsb+restarts" and r.num_starts == 9
    assert "stationary" in r.escalation
    assert r.start_values[0] == 0.0  # the paper's search alone finds nothing
    assert not r.disagree  # every vertex of a diagonal bowl is a maximum


def test_the_bowl_value_scales_as_eps_squared(centre, curvatures):
    def bowl(x):
        return 0.5 * (curvatures * (x - centre) ** 2).sum()

    # Half-widths eps (|c| + 1) are linear in eps, so the box maximum is quadratic in it.
    small = keskar_sharpness(bowl, centre.clone(), eps=1e-3).value
    large = keskar_sharpness(bowl, centre.clone(), eps=4e-3).value
    assert large / small == pytest.approx(16.0, rel=1e-9)


def test_without_escalation_the_paper_search_reports_zero_at_a_minimum(centre, curvatures):
    def bowl(x):
        return 0.5 * (curvatures * (x - centre) ** 2).sum()

    r = keskar_sharpness(bowl, centre.clone(), eps=1e-3, escalate_stuck=False)
    assert r.value == 0.0
    assert r.search == "lbfgsb" and r.num_starts == 1 and r.escalation == ""
    assert r.settings["escalate"] is False


def test_a_saddle_started_at_its_stationary_point(centre, curvatures):
    sign = torch.where(torch.arange(N) % 3 == 0, 1.0, -1.0).double()

    def saddle(x):  # ascending along every third coordinate, descending along the rest
        return 2.0 + 0.5 * (sign * curvatures * (x - centre) ** 2).sum()

    eps = 2e-3
    r = keskar_sharpness(saddle, centre.clone(), eps=eps)
    w = halfwidth(centre, eps)
    rise = float(0.5 * (curvatures * w**2)[sign > 0].sum())
    assert r.value == pytest.approx(metric(2.0 + rise, 2.0), rel=1e-4)
    assert r.value <= metric(2.0 + rise, 2.0) * (1 + 1e-9)
    assert r.search == "lbfgsb+restarts"


def test_a_separable_quartic_whose_maxima_are_inside_the_box(centre):
    eps = 1e-2
    w = halfwidth(centre, eps)
    # q(t) = t^2 - t^4 / c^2 peaks at |t| = c / sqrt(2) with value c^2 / 4; c spans both
    # sides of sqrt(2) w, so some maxima are inside the box and some on its faces.
    scale = torch.linspace(0.5, 2.5, N, dtype=torch.float64) * w

    def quartic(x):
        t = x - centre
        return (t**2 - t**4 / scale**2).sum()

    r = keskar_sharpness(quartic, centre.clone(), eps=eps)
    t_star = torch.minimum(scale / math.sqrt(2.0), w)
    expected = metric(float((t_star**2 - t_star**4 / scale**2).sum()), 0.0)
    assert r.value == pytest.approx(expected, rel=1e-4)
    assert r.value <= expected * (1 + 1e-9)  # a maximiser never exceeds the maximum
    assert r.search == "lbfgsb+restarts"


def test_an_interior_maximum_is_found_and_confirmed_by_the_extra_starts(centre, curvatures):
    eps = 1e-2
    w = halfwidth(centre, eps)
    peak = 0.3 * w * torch.where(torch.arange(N) % 2 == 0, 1.0, -1.0).double()

    def cap(x):  # concave, maximum 1 at x = centre + peak, inside the box
        return 1.0 - (curvatures * (x - centre - peak) ** 2).sum()

    r = keskar_sharpness(cap, centre.clone(), eps=eps, max_iters=50)
    f0 = 1.0 - float((curvatures * peak**2).sum())
    assert r.value == pytest.approx(metric(1.0, f0), rel=1e-8)
    # L-BFGS-B converged early inside the box, so the other starts were asked: they agree.
    assert r.search == "lbfgsb+restarts" and "unexplored" in r.escalation
    assert not r.disagree


def test_a_local_maximum_next_to_the_start_does_not_hide_a_higher_face():
    eps = 0.1
    w = eps * (0.0 + 1.0)
    m = 0.1 * w

    def hill(x):  # a local maximum at t ~ m; the face t = w is higher still
        t = x[0]
        return -((t - m) ** 2) + 3 * t**4 / w**2

    x = torch.zeros(1, dtype=torch.float64)
    paper = keskar_sharpness(hill, x, eps=eps, escalate_stuck=False)
    r = keskar_sharpness(hill, x, eps=eps)
    face = float(hill(torch.tensor([w], dtype=torch.float64)))
    f0 = float(hill(x))
    assert paper.value < 0.01 * metric(face, f0)  # the paper's search stops on the hill
    assert r.value == pytest.approx(metric(face, f0), rel=1e-9)
    assert "unexplored" in r.escalation


def test_a_sloped_start_runs_exactly_the_papers_search():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(N, N, generator=g, dtype=torch.float64)
    b = torch.randn(N, generator=g, dtype=torch.float64)

    def f(x):
        return 1.0 + torch.log1p((M @ x + b).pow(2).sum())

    x = torch.randn(N, generator=g, dtype=torch.float64)
    default = keskar_sharpness(f, x, eps=1e-3)
    paper = keskar_sharpness(f, x, eps=1e-3, escalate_stuck=False)
    assert default.value == paper.value and default.num_evals == paper.num_evals
    assert default.cost.num_grad == paper.cost.num_grad
    assert default.search == "lbfgsb" and default.start_values == ()


def test_starts_that_find_different_maxima_are_flagged():
    def lopsided(x):  # stationary at 0; the vertex +w is twice as high as -w
        t = x[0]
        return t**2 + t**3 / (3 * 0.002)

    r = keskar_sharpness(lopsided, torch.zeros(1, dtype=torch.float64), eps=2e-3)
    w = 2e-3
    assert r.value == pytest.approx(metric(w**2 + w**2 / 3, 0.0), rel=1e-9)
    assert sorted({round(v / r.value, 6) for v in r.start_values[1:]}) == [0.5, 1.0]
    assert r.spread == pytest.approx(r.value / 2, rel=1e-9)
    assert r.disagree
    d = r.to_dict()
    assert d["disagree"] is True and d["search"] == "lbfgsb+restarts"
    assert len(d["start_values"]) == 9


def test_adaptive_sharpness_escalates_too(centre, curvatures):
    def bowl(x):
        return 0.5 * (curvatures * (x - centre) ** 2).sum()

    r = adaptive_sharpness(bowl, centre.clone(), eps=1e-2)
    expected = float(0.5 * (curvatures * (1e-2 * centre.abs()) ** 2).sum())
    assert r.value == pytest.approx(expected, rel=1e-9)
    assert r.search == "lbfgsb+restarts"


def test_multistart_reports_its_spread(centre, curvatures):
    def bowl(x):
        return 0.5 * (curvatures * (x - centre) ** 2).sum()

    r = keskar_sharpness_multistart(bowl, centre.clone(), eps=1e-3, num_starts=5, seed=1)
    assert r.search == "multistart-lbfgsb" and r.num_starts == 5
    extra = r.start_values[1:]
    assert r.spread == pytest.approx(max(extra) - min(extra))
    assert r.disagree == (r.spread > 0.05 * r.value)


@pytest.mark.parametrize("bad", [{"extra_starts": -1}, {"extra_starts": 1.5}, {"agree_tol": -0.1}])
def test_bad_escalation_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        keskar_sharpness(lambda x: (x**2).sum(), torch.zeros(3), **bad)


def test_the_registered_measure_takes_the_escalation_parameters(centre, curvatures):
    def bowl(x):
        return 0.5 * (curvatures * (x - centre) ** 2).sum()

    x = centre.clone()
    on = registry.compute("keskar_sharpness", bowl, x, {"eps": 1e-3})
    off = registry.compute("keskar_sharpness", bowl, x, {"eps": 1e-3, "escalate": False})
    few = registry.compute("sharpness", bowl, x, {"eps": 1e-3, "extra_starts": 2})
    assert on.value > 0 and off.value == 0.0
    assert few.num_starts == 3
    with pytest.raises(ConfigError):
        registry.compute("keskar_sharpness", bowl, x, {"extra_starts": -2})


def test_a_network_minimum_keeps_the_papers_search_against_a_many_start_reference():
    from cases import mlp_case

    case = mlp_case("bn-batch")
    obj = case.objective()
    x = case.x0.clone()
    for _ in range(200):  # descend to near a minimum: small but non-zero gradient
        _, g = obj.loss_and_grad(x)
        x = x - 0.5 * g
    default = keskar_sharpness(obj, x, eps=1e-3)
    paper = keskar_sharpness(obj, x, eps=1e-3, escalate_stuck=False)
    reference = keskar_sharpness_multistart(obj, x, eps=1e-3, num_starts=12, seed=0)
    assert default.search == "lbfgsb" and default.value == paper.value
    assert default.cost.num_grad == paper.cost.num_grad
    assert reference.baseline == default.value <= reference.value
    assert default.value >= 0.5 * reference.value
