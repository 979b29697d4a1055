"""Training: baseline, Mixup, CutMix and feature binding (stage 1 blending + stage 2 denoising).

``train(config) -> checkpoint path``; ``train_recipe(name, data_root, out)`` trains a zoo entry;
``export_to_zoo(name, ckpt, models_dir)`` ships it. See docs/training.md.
"""
from .config import BLEND_NAMES, METHOD_NAMES, PRESETS, TrainConfig, resolve_config
from .recipes import ZOO_RECIPES, export_to_zoo, recipe_command, train_recipe
from .samplers import BLENDS
from .methods import METHODS
from .trainer import TrainingError, train

__all__ = [
    "BLENDS", "BLEND_NAMES", "METHODS", "METHOD_NAMES", "PRESETS", "TrainConfig", "TrainingError", "ZOO_RECIPES",
    "export_to_zoo", "recipe_command", "resolve_config", "train", "train_recipe",
]
