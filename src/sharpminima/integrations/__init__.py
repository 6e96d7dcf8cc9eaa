"""Measuring inside other people's training: callbacks for Lightning and Hugging Face, loggers.

* :func:`measure_model`: registered measures of a live model on held data, leaving every
  piece of training state as it was (weights, buffers, optimizer state, random state,
  train/eval flags, ``.grad``);
* :func:`log_results`: any result to TensorBoard, Weights & Biases, MLflow, a Lightning
  logger or a function;
* :class:`~sharpminima.integrations.lightning.SharpnessCallback` (extra ``[lightning]``)
  and :class:`~sharpminima.integrations.huggingface.SharpnessTrainerCallback` (extra
  ``[hf]``), imported from their modules so that this package needs neither library.
"""

from sharpminima.integrations.measuring import MeasureSpec, log_results, measure_model, metrics_of

__all__ = ["MeasureSpec", "log_results", "measure_model", "metrics_of"]
