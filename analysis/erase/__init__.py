"""Concept erasure: fine-tune (ESD) or edit in closed form (UCE, RECE) a UNet so a concept stops
steering it, for audits."""

from __future__ import annotations

from analysis.erase.esd import EsdTrainer, train_esd, trainable_names
from analysis.erase.rece import ReceSettings, train_rece
from analysis.erase.recipes import RECIPES, EsdSettings, Recipe
from analysis.erase.uce import UceSettings, erase_uce
from analysis.store.weights import read_recipe

__all__ = [
    "RECIPES",
    "EsdSettings",
    "EsdTrainer",
    "ReceSettings",
    "Recipe",
    "UceSettings",
    "erase_uce",
    "read_recipe",
    "train_esd",
    "train_rece",
    "trainable_names",
]
