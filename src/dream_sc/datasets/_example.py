"""A small bundled screen: simulated counts on the design of a real CRISPRi screen."""

from __future__ import annotations

import logging
from importlib import resources

import numpy as np
import pandas as pd
from mudata import MuData

from ._design import draw_cell_lines, finish_design
from ._simulate import build_screen

logger = logging.getLogger("dream_sc")

_DESIGN_FILE = "example_design.csv"
_SEED = 20240601
_TARGETS = ["GFI1B", "GEMIN5", "DDX6"]
_CONTROL = "ntc"
#: Simulated knock-down strength (log2 dosage effect) of the real guides; NTC guides are 0.
_GUIDE_EFFECTS = {
    "GFI1B_1": -2.6,
    "GFI1B_2": -1.5,
    "GFI1B_3": -0.5,
    "GEMIN5_1": -1.8,
    "GEMIN5_2": -0.8,
    "DDX6_1": -2.2,
    "DDX6_3": -1.0,
}
#: Baseline dosage (expected counts per unit size factor in the reference line).
_X_NTC = {"GFI1B": 12.0, "GEMIN5": 8.0, "DDX6": 20.0}


def read_example_design() -> pd.DataFrame:
    """The bundled design table: ``barcode``, ``guide``, ``target``, ``sum_factor``."""
    source = resources.files(__package__).joinpath("data", _DESIGN_FILE)
    with source.open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle, dtype={"barcode": str, "guide": str, "target": str})


def _guide_table(table: pd.DataFrame) -> pd.DataFrame:
    pairs = table[["guide", "target"]].drop_duplicates()
    order = {t: i for i, t in enumerate(_TARGETS)}
    pairs = pairs.assign(
        _rank=pairs["target"].map(lambda t: order.get(t, len(order))),
    ).sort_values(["_rank", "guide"])
    guides = pd.DataFrame(
        {
            "target": pairs["target"].to_numpy(),
            "log2_effect": [_GUIDE_EFFECTS.get(g, 0.0) for g in pairs["guide"]],
        },
        index=pd.Index(pairs["guide"].to_numpy()),
    )
    return guides


def example() -> MuData:
    """A small screen simulated on the design of a real CRISPRi screen (no download).

    The design (2,600 cell barcodes, their guides, targets and size factors) comes from a real
    screen with three targets, ``GFI1B`` (primary cis gene), ``GEMIN5`` and ``DDX6``, of 2-3
    guides each and five NTC guides (target ``"ntc"``). Everything else is simulated with a fixed
    seed by the generative model of :func:`simulate_screen`: guide knock-down strengths, the
    cell-to-cell dosage (log2 sd 0.3), two cell lines (``K562`` reference, ``HEK293T``) assigned
    at random, and 200 ``rna`` genes (the 3 targets first), 100 ``splicing`` junctions and 30
    ``isoform`` genes, 30% of them responsive to the ``GFI1B`` dosage. The real screen's size
    factors are the generating capture efficiencies (``obs["true_size_factor"]``);
    ``obs["sum_factor"]`` is estimated from the simulated counts by
    :func:`dream_sc.pp.sum_factors`, as for :func:`simulate_screen`.

    Returns
    -------
    MuData with ``rna``, ``splicing`` and ``isoform`` and the ground truth, laid out as described
    in :func:`simulate_screen`.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.example()
    >>> mdata.n_obs
    2600
    >>> int((mdata.obs["target"] == "ntc").sum())
    1491
    """
    table = read_example_design()
    rng = np.random.default_rng(_SEED)
    guides = _guide_table(table)
    position = pd.Series(np.arange(len(guides)), index=guides.index)
    assignment = np.zeros((len(table), len(guides)), dtype=np.int8)
    assignment[np.arange(len(table)), position[table["guide"]].to_numpy()] = 1
    design = finish_design(
        rng,
        obs_names=pd.Index(table["barcode"].to_numpy()),
        assignment=assignment,
        guides=guides,
        targets=list(_TARGETS),
        x_ntc=dict(_X_NTC),
        sum_factor=table["sum_factor"].to_numpy(dtype=np.float64),
        cell_line=draw_cell_lines(rng, len(table), ("K562", "HEK293T")),
        dose_noise=0.3,
        depth=1.0,
        control_label=_CONTROL,
        moi="low",
    )
    return build_screen(
        design,
        rng,
        n_genes=200,
        n_junctions=100,
        n_isoform_genes=30,
        frac_responsive=0.3,
        technical_sd=0.3,
        n_scores=0,
        seed=_SEED,
    )
