"""Simulated screens with known truth and a small bundled example screen."""

from ._example import example
from ._high_moi import simulate_high_moi
from ._many_targets import simulate_many_targets
from ._simulate import simulate_screen
from ._truth import true_curve
from ._write_formats import (
    binomial_to_junctions,
    write_cellranger,
    write_gtf,
    write_starsolo_junctions,
)

__all__ = [
    "binomial_to_junctions",
    "example",
    "simulate_high_moi",
    "simulate_many_targets",
    "simulate_screen",
    "true_curve",
    "write_cellranger",
    "write_gtf",
    "write_starsolo_junctions",
]
