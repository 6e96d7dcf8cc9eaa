"""The paper's published numbers (Keskar et al., ICLR 2017, arXiv:1609.04836, Tables 2-4)."""

from __future__ import annotations

# (mean, std) per network: train SB, train LB, test SB, test LB (Table 2).
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "f1": {
        "train_sb": (99.66, 0.05),
        "train_lb": (99.92, 0.01),
        "test_sb": (98.03, 0.07),
        "test_lb": (97.81, 0.07),
    },
    "f2": {
        "train_sb": (99.99, 0.03),
        "train_lb": (98.35, 2.08),
        "test_sb": (64.02, 0.2),
        "test_lb": (59.45, 1.05),
    },
    "c1": {
        "train_sb": (99.89, 0.02),
        "train_lb": (99.66, 0.2),
        "test_sb": (80.04, 0.12),
        "test_lb": (77.26, 0.42),
    },
    "c2": {
        "train_sb": (99.99, 0.04),
        "train_lb": (99.99, 0.01),
        "test_sb": (89.24, 0.12),
        "test_lb": (87.26, 0.07),
    },
    "c3": {
        "train_sb": (99.56, 0.44),
        "train_lb": (99.88, 0.30),
        "test_sb": (49.58, 0.39),
        "test_lb": (46.45, 0.43),
    },
    "c4": {
        "train_sb": (99.10, 1.23),
        "train_lb": (99.57, 1.84),
        "test_sb": (63.08, 0.5),
        "test_lb": (57.81, 0.17),
    },
}

# Keskar sharpness (mean, std): (subspace, eps, regime) per network (Tables 3 and 4).
_T3 = {
    "f1": ((1.23, 0.83), (205.14, 69.52), (0.61, 0.27), (42.90, 17.14)),
    "f2": ((1.39, 0.02), (310.64, 38.46), (0.90, 0.05), (93.15, 6.81)),
    "c1": ((28.58, 3.13), (707.23, 43.04), (7.08, 0.88), (227.31, 23.23)),
    "c2": ((8.68, 1.32), (925.32, 38.29), (2.07, 0.86), (175.31, 18.28)),
    "c3": ((29.85, 5.98), (258.75, 8.96), (8.56, 0.99), (105.11, 13.22)),
    "c4": ((12.83, 3.84), (421.84, 36.97), (4.07, 0.87), (109.35, 16.57)),
}
_T4 = {
    "f1": ((0.11, 0.00), (9.22, 0.56), (0.05, 0.00), (9.17, 0.14)),
    "f2": ((0.29, 0.02), (23.63, 0.54), (0.05, 0.00), (6.28, 0.19)),
    "c1": ((2.18, 0.23), (137.25, 21.60), (0.71, 0.15), (29.50, 7.48)),
    "c2": ((0.95, 0.34), (25.09, 2.61), (0.31, 0.08), (5.82, 0.52)),
    "c3": ((17.02, 2.20), (236.03, 31.26), (4.03, 1.45), (86.96, 27.39)),
    "c4": ((6.05, 1.13), (72.99, 10.96), (1.89, 0.33), (19.85, 4.12)),
}


def sharpness(net: str, subspace: str, eps: float, regime: str) -> tuple[float, float] | None:
    """The paper's sharpness for a network, subspace (full/random), eps and regime (sb/lb)."""
    table = _T3 if subspace == "full" else _T4
    if net not in table or eps not in (1e-3, 5e-4):
        return None
    i = (0 if eps == 1e-3 else 2) + (0 if regime == "sb" else 1)
    return table[net][i]


#: The paper's distance-from-start ratio ||x_SB - x0|| / ||x_LB - x0||.
DISTANCE_RATIO = (3.0, 10.0)
