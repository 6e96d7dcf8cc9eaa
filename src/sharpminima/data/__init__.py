"""Datasets of the paper: MNIST, CIFAR-10/100, TIMIT (user-supplied) and a synthetic one.

``load(name)`` returns a :class:`Dataset` of float32 tensors, building an ``.npz`` cache
in :func:`data_dir` first if needed (``fetch``); ``info()`` lists what is cached. Pickled
sources are read with a restricted unpickler and checked against known checksums; every
user-caused problem is a one-line :class:`~sharpminima.errors.DataError`.
"""

from sharpminima.data.api import NAMES, fetch, info, load
from sharpminima.data.base import Dataset
from sharpminima.data.cache import cache_path, data_dir
from sharpminima.data.synthetic import synthetic

__all__ = ["NAMES", "Dataset", "cache_path", "data_dir", "fetch", "info", "load", "synthetic"]
