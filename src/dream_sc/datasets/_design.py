"""Screen design of the simulator: guides, cells, cell lines, size factors and true dosages.

Dosage scale: expected counts of a target gene per unit size factor in the reference cell line.
Per cell and target gene ``t``::

    log2 x_it = log2 x_ntc,t + sum_g A_ig b_g [target(g) = t] + Normal(0, dose_noise)

with ``A`` the cells × guides assignment (one-hot at low MOI), so at low MOI a cell of another
target (or an NTC cell) has gene ``t`` at its NTC dosage, with noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._curves import DoseWindow

REAL_TARGETS: tuple[str, ...] = ("GFI1B", "GEMIN5", "DDX6")
_X_NTC_RANGE = (5.0, 30.0)
_SIZE_FACTOR_SD = 0.3
_MIN_LOG2_WINDOW = 0.5


@dataclass
class Design:
    """Everything about a screen except its feature counts (see module docstring)."""

    obs_names: pd.Index
    guide: np.ndarray
    target: np.ndarray
    cell_line: pd.Categorical
    sum_factor: np.ndarray
    targets: list[str]
    control_label: str
    guides: pd.DataFrame
    x_ntc: dict[str, float]
    doses: np.ndarray
    assignment: pd.DataFrame | None
    dose_noise: float
    depth: float
    moi: str
    #: cells whose guide did not act (escaper option); None without the option
    escaped: np.ndarray | None = None
    #: primary dosage the cells would have without escapers (sets the curves' window)
    intended_dose: np.ndarray | None = None
    #: nominal escape fraction of the targeting guides (escaper option)
    escape_fraction: float = 0.0

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.obs_names)

    @property
    def line_codes(self) -> np.ndarray:
        """Integer cell-line code per cell (0 = reference)."""
        return np.asarray(self.cell_line.codes, dtype=np.intp)

    @property
    def cis_feature(self) -> str:
        """The primary cis gene."""
        return self.targets[0]

    @property
    def primary_dose(self) -> np.ndarray:
        """True dosage of the primary cis gene per cell."""
        return self.doses[:, 0]

    def window(self) -> DoseWindow:
        """Dosage window of the primary cis gene over the cells of its cis fit.

        Those are the NTC cells plus the primary target's cells (all cells at high MOI). A
        window narrower than 0.5 on the log2 scale is widened around its geometric centre.
        """
        if self.moi == "high":
            mask = np.ones(self.n_cells, dtype=bool)
        else:
            mask = np.isin(self.target, [self.cis_feature, self.control_label])
        dose = self.primary_dose if self.intended_dose is None else self.intended_dose
        x = dose[mask] if mask.sum() >= 2 else dose
        lo, k_lo, k_hi, hi = np.quantile(x, [0.05, 0.10, 0.90, 0.95])
        if np.log2(hi / lo) < _MIN_LOG2_WINDOW:
            centre = np.sqrt(lo * hi)
            lo, hi = centre * 2.0**-0.25, centre * 2.0**0.25
            k_lo, k_hi = centre * 2.0**-0.2, centre * 2.0**0.2
        return DoseWindow(
            lo=float(lo),
            hi=float(hi),
            k_lo=float(k_lo),
            k_hi=float(k_hi),
            x_ntc=float(self.x_ntc[self.cis_feature]),
        )


def target_names(n_targets: int) -> list[str]:
    """``GFI1B``, ``GEMIN5``, ``DDX6``, then ``TGT4``, ``TGT5``, ..."""
    return [REAL_TARGETS[i] if i < len(REAL_TARGETS) else f"TGT{i + 1}" for i in range(n_targets)]


def cell_names(n_cells: int) -> pd.Index:
    """``cell_00001``, ``cell_00002``, ..."""
    width = max(5, len(str(n_cells)))
    return pd.Index([f"cell_{i:0{width}d}" for i in range(1, n_cells + 1)])


def make_guides(
    rng: np.random.Generator,
    targets: list[str],
    *,
    guides_per_target: int,
    n_ntc_guides: int,
    log2_range: tuple[float, float],
    control_label: str,
) -> pd.DataFrame:
    """Guide table (index guide names; ``target``, ``log2_effect``).

    Each target's effects are evenly spread over ``log2_range`` with a jitter of ±20% of the
    spacing (clipped to the range), in random order over ``<TARGET>_1..k``. NTC guides have 0.
    """
    lo, hi = log2_range
    names: list[str] = []
    tgt: list[str] = []
    effects: list[np.ndarray] = []
    for target in targets:
        if guides_per_target > 1:
            base = np.linspace(lo, hi, guides_per_target)
            step = (hi - lo) / (guides_per_target - 1)
        else:
            base, step = np.array([(lo + hi) / 2.0]), 0.0
        jitter = rng.uniform(-0.2, 0.2, size=guides_per_target) * step
        effects.append(rng.permutation(np.clip(base + jitter, lo, hi)))
        names += [f"{target}_{k}" for k in range(1, guides_per_target + 1)]
        tgt += [target] * guides_per_target
    names += [f"NTC_{k}" for k in range(1, n_ntc_guides + 1)]
    tgt += [control_label] * n_ntc_guides
    effects.append(np.zeros(n_ntc_guides))
    return pd.DataFrame(
        {"target": tgt, "log2_effect": np.concatenate(effects)}, index=pd.Index(names)
    )


def draw_x_ntc(rng: np.random.Generator, targets: list[str], depth: float) -> dict[str, float]:
    """Baseline dosage per target gene, log-uniform in [5, 30] counts, times ``depth``."""
    values = np.exp(rng.uniform(*np.log(_X_NTC_RANGE), size=len(targets))) * depth
    return {t: float(v) for t, v in zip(targets, values, strict=True)}


def draw_sum_factors(rng: np.random.Generator, n_cells: int) -> np.ndarray:
    """Log-normal size factors (sd 0.3 on the log scale), scaled to mean 1."""
    s = np.exp(rng.normal(0.0, _SIZE_FACTOR_SD, size=n_cells))
    return s / s.mean()


def draw_cell_lines(
    rng: np.random.Generator, n_cells: int, cell_lines: tuple[str, ...]
) -> pd.Categorical:
    """Cell line per cell, uniformly at random; categories in the given order."""
    codes = rng.integers(len(cell_lines), size=n_cells)
    return pd.Categorical.from_codes(codes, categories=list(cell_lines))


def assign_low_moi(
    rng: np.random.Generator, guides: pd.DataFrame, n_cells: int, ntc_fraction: float, control: str
) -> np.ndarray:
    """One guide per cell: ``round(ntc_fraction * n_cells)`` NTC cells, the rest targeting."""
    is_ntc = (guides["target"] == control).to_numpy()
    n_ntc = int(round(ntc_fraction * n_cells))
    picks = np.concatenate(
        [
            rng.choice(np.flatnonzero(is_ntc), size=n_ntc),
            rng.choice(np.flatnonzero(~is_ntc), size=n_cells - n_ntc),
        ]
    )
    picks = rng.permutation(picks)
    assignment = np.zeros((n_cells, len(guides)), dtype=np.int8)
    assignment[np.arange(n_cells), picks] = 1
    return assignment


def assign_high_moi(
    rng: np.random.Generator, n_guides: int, n_cells: int, guides_per_cell: float
) -> np.ndarray:
    """``max(1, Poisson(guides_per_cell))`` distinct guides per cell (at most all guides)."""
    k = np.clip(rng.poisson(guides_per_cell, size=n_cells), 1, n_guides)
    ranks = rng.random((n_cells, n_guides)).argsort(axis=1).argsort(axis=1)
    return (ranks < k[:, None]).astype(np.int8)


def _labels(
    assignment: np.ndarray, guides: pd.DataFrame, targets: list[str], control: str
) -> tuple[np.ndarray, np.ndarray]:
    """Guide label (``+``-joined) and target label per cell, computed per unique guide set."""
    combos, inverse = np.unique(assignment, axis=0, return_inverse=True)
    names = guides.index.to_numpy()
    guide_target = guides["target"].to_numpy()
    guide_lab = np.empty(len(combos), dtype=object)
    target_lab = np.empty(len(combos), dtype=object)
    for j, row in enumerate(combos):
        on = row > 0
        guide_lab[j] = "+".join(names[on])
        hit = set(guide_target[on])
        present = [t for t in targets if t in hit]
        target_lab[j] = present[0] if present else control
    inverse = np.asarray(inverse).reshape(-1)
    return guide_lab[inverse].astype(str), target_lab[inverse].astype(str)


def finish_design(
    rng: np.random.Generator,
    *,
    obs_names: pd.Index,
    assignment: np.ndarray,
    guides: pd.DataFrame,
    targets: list[str],
    x_ntc: dict[str, float],
    sum_factor: np.ndarray,
    cell_line: pd.Categorical,
    dose_noise: float,
    depth: float,
    control_label: str,
    moi: str,
    escaped: np.ndarray | None = None,
) -> Design:
    """Draw the true dosages and labels of a design (see module docstring).

    ``escaped`` (escaper option, low MOI): cells whose guide does not act; their dosages keep
    only the NTC level and the noise. The curves' window stays that of the intended dosages.
    """
    guide_target = guides["target"].to_numpy()
    effect = np.zeros((len(guides), len(targets)))
    for j, target in enumerate(targets):
        on = guide_target == target
        effect[on, j] = guides["log2_effect"].to_numpy()[on]
    log2_ntc = np.log2([x_ntc[t] for t in targets])
    noise = rng.normal(0.0, dose_noise, size=(len(obs_names), len(targets)))
    shift = assignment.astype(np.float64) @ effect
    doses = 2.0 ** (log2_ntc[None, :] + shift + noise)
    intended = None
    if escaped is not None:
        intended = doses[:, 0].copy()
        doses[escaped] = 2.0 ** (log2_ntc[None, :] + noise[escaped])
    guides = guides.copy()
    own = [x_ntc.get(t, x_ntc[targets[0]]) for t in guide_target]
    guides["dose"] = np.asarray(own) * 2.0 ** guides["log2_effect"].to_numpy()
    guide, target = _labels(assignment, guides, targets, control_label)
    frame = None
    if moi == "high":
        frame = pd.DataFrame(
            assignment.astype(np.int64), index=obs_names, columns=guides.index.copy()
        )
    return Design(
        obs_names=obs_names,
        guide=guide,
        target=target,
        cell_line=cell_line,
        sum_factor=np.asarray(sum_factor, dtype=np.float64),
        targets=list(targets),
        control_label=control_label,
        guides=guides,
        x_ntc=dict(x_ntc),
        doses=doses,
        assignment=frame,
        dose_noise=float(dose_noise),
        depth=float(depth),
        moi=moi,
        escaped=escaped,
        intended_dose=intended,
    )


#: Guide designs of :func:`~dream_sc.datasets.simulate_screen`.
GUIDE_DESIGNS = ("shared", "line_specific")


def make_line_guides(
    rng: np.random.Generator,
    targets: list[str],
    *,
    lines: tuple[str, str],
    guides_per_line: int,
    n_ntc_guides: int,
    crispri_log2_range: tuple[float, float],
    crispra_log2_range: tuple[float, float],
    control_label: str,
) -> pd.DataFrame:
    """Guide table of the line-specific design (CRISPRi guides in one line, CRISPRa in the other).

    Every target gets ``guides_per_line`` CRISPRi guides ``<TARGET>_i1..`` that exist only in
    ``lines[0]`` (log2 effects spread over ``crispri_log2_range`` like :func:`make_guides`) and as
    many CRISPRa guides ``<TARGET>_a1..`` only in ``lines[1]`` (``crispra_log2_range``); the NTC
    guides exist in both lines (``line`` is the empty string). Columns: ``target``,
    ``log2_effect``, ``line``, ``modality`` (``CRISPRi`` / ``CRISPRa`` / ``NTC``).
    """
    parts = []
    for line, rng_, tag, kind in (
        (lines[0], crispri_log2_range, "i", "CRISPRi"),
        (lines[1], crispra_log2_range, "a", "CRISPRa"),
    ):
        table = make_guides(
            rng,
            targets,
            guides_per_target=guides_per_line,
            n_ntc_guides=0,
            log2_range=rng_,
            control_label=control_label,
        )
        table.index = [
            name.rsplit("_", 1)[0] + f"_{tag}" + name.rsplit("_", 1)[1] for name in table.index
        ]
        table["line"] = line
        table["modality"] = kind
        parts.append(table)
    ntc = pd.DataFrame(
        {
            "target": [control_label] * n_ntc_guides,
            "log2_effect": np.zeros(n_ntc_guides),
            "line": "",
            "modality": "NTC",
        },
        index=pd.Index([f"NTC_{k}" for k in range(1, n_ntc_guides + 1)]),
    )
    return pd.concat([*parts, ntc])


def guide_mix_weights(
    guides: pd.DataFrame, line_index: int, n_lines: int, skew: float
) -> np.ndarray:
    """Relative weight of every guide among the targeting cells of one cell line.

    ``exp(skew * s_l * z_g)`` with ``z_g`` the guide's standardised log2 effect (within its
    target) and ``s_l`` spread evenly from ``+1`` (first line) to ``-1`` (last line): with
    ``skew > 0`` the first line holds more of the strongest-dosage guides and the last line more
    of the weakest; ``skew = 0`` gives every guide the same weight in every line.
    """
    effect = guides["log2_effect"].to_numpy(dtype=np.float64)
    z = np.zeros(len(guides))
    for target in np.unique(guides["target"].to_numpy()):
        on = guides["target"].to_numpy() == target
        sd = effect[on].std()
        z[on] = (effect[on] - effect[on].mean()) / sd if sd > 0 else 0.0
    side = 1.0 if n_lines == 1 else 1.0 - 2.0 * line_index / (n_lines - 1)
    return np.exp(skew * side * z)


def assign_low_moi_by_line(
    rng: np.random.Generator,
    guides: pd.DataFrame,
    cell_line: pd.Categorical,
    ntc_fraction: float,
    control: str,
    skew: float,
) -> np.ndarray:
    """One guide per cell, drawn among the guides present in the cell's line.

    In every line ``round(ntc_fraction * cells of the line)`` cells get an NTC guide (uniformly)
    and the others a targeting guide available in that line (column ``line`` empty or equal to
    the line; all guides when the table has no ``line`` column), with the weights of
    :func:`guide_mix_weights`.
    """
    is_ntc = (guides["target"] == control).to_numpy()
    where = guides["line"].to_numpy() if "line" in guides else np.full(len(guides), "")
    codes = np.asarray(cell_line.codes)
    lines = list(cell_line.categories)
    assignment = np.zeros((len(codes), len(guides)), dtype=np.int8)
    for index, line in enumerate(lines):
        cells = np.flatnonzero(codes == index)
        if len(cells) == 0:
            continue
        targeting = np.flatnonzero(~is_ntc & ((where == "") | (where == line)))
        if len(targeting) == 0:
            raise ValueError(f"Cell line {line!r} has no targeting guide.")
        weights = guide_mix_weights(guides.iloc[targeting], index, len(lines), skew)
        n_ntc = int(round(ntc_fraction * len(cells)))
        picks = np.concatenate(
            [
                rng.choice(np.flatnonzero(is_ntc), size=n_ntc),
                rng.choice(targeting, size=len(cells) - n_ntc, p=weights / weights.sum()),
            ]
        )
        assignment[cells, rng.permutation(picks)] = 1
    return assignment
