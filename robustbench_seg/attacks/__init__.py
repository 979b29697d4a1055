"""Universal perturbations: the file format, importers, the apply function, UAP and GD-UAP."""
from .apply import DEFAULT_CLIP, DEFAULT_FIT, FitMode, apply_perturbation, fit_perturbation
from .perturbation import Perturbation, list_perturbations, load_perturbation, save_perturbation

__all__ = [
    "DEFAULT_CLIP", "DEFAULT_FIT", "FitMode", "Perturbation", "apply_perturbation", "fit_perturbation",
    "list_perturbations", "load_perturbation", "save_perturbation",
]
