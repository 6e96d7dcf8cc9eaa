"""sharpminima: reproduce, measure and close the large-batch generalization gap.

Keskar, Mudigere, Nocedal, Smelyanskiy, Tang, "On Large-Batch Training for Deep Learning:
Generalization Gap and Sharp Minima", ICLR 2017 (arXiv 1609.04836).
"""

from sharpminima.errors import SharpMinimaError

__version__ = "0.1.0"
__all__ = ["SharpMinimaError", "__version__"]
