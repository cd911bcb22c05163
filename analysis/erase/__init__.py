"""Concept erasure: fine-tune a UNet so a concept stops steering it (ESD), for audits."""

from __future__ import annotations

from analysis.erase.esd import EsdTrainer, train_esd, trainable_names
from analysis.erase.recipes import RECIPES, EsdSettings, Recipe
from analysis.store.weights import read_recipe

__all__ = [
    "RECIPES",
    "EsdSettings",
    "EsdTrainer",
    "Recipe",
    "read_recipe",
    "train_esd",
    "trainable_names",
]
