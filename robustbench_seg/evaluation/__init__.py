"""Scoring: the metric (confusion matrix -> mIoU), the evaluation engine and the results store."""
from .metric import SegMetrics, confusion_matrix, intersect_and_union, metrics_from_confusion

__all__ = ["SegMetrics", "confusion_matrix", "intersect_and_union", "metrics_from_confusion"]
