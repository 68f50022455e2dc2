"""Simulated screens with known truth and a small bundled example screen."""

from ._example import example
from ._simulate import simulate_screen, true_curve

__all__ = ["example", "simulate_screen", "true_curve"]
