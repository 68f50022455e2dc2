"""``pl.prior_posterior``: the prior a fit actually used against the fitted posterior."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData
from scipy import stats

from .. import _validation as V
from .._stores.trans import read_posterior_frame
from ..models.cis import guide_effect_prior_draws
from ..models.curves import get_curve
from ..models.trans_summary import Z90
from ._docs import AX, FIGSIZE, RETURN_FIG, SHOW, doc_params
from ._fits import Fit, find_fits
from ._utils import CURVE_COLOR, GREY, SHAPE_COLORS, finish, single_axes

#: Draws used for priors without a closed-form marginal (hierarchical guide effects).
N_PRIOR_DRAWS = 20_000


@dataclass
class Density:
    """A univariate density with the range worth drawing."""

    label: str
    pdf: Callable[[np.ndarray], np.ndarray]
    lo: float
    hi: float


def _normal(loc: float, scale: float, what: str) -> Density:
    loc, scale = float(loc), float(scale)
    return Density(
        f"{what}: Normal({loc:.3g}, {scale:.3g})",
        lambda x: stats.norm.pdf(x, loc, scale),
        loc - 4 * scale,
        loc + 4 * scale,
    )


def _student(df: float, loc: float, scale: float, what: str) -> Density:
    df, loc, scale = float(df), float(loc), float(scale)
    return Density(
        f"{what}: StudentT({df:g}, {loc:.3g}, {scale:.3g})",
        lambda x: stats.t.pdf(x, df, loc, scale),
        loc - 6 * scale,
        loc + 6 * scale,
    )


def _log_half_cauchy(what: str) -> Density:
    def pdf(u):
        u = np.asarray(u, dtype=float)
        return 2.0 / np.pi / (np.exp(-u) + np.exp(u))

    return Density(f"{what}: log of HalfCauchy(1)", pdf, -5.0, 4.0)


def _sampled(draws: np.ndarray, what: str) -> Density:
    kde = stats.gaussian_kde(draws)
    lo, hi = np.quantile(draws, [0.005, 0.995])
    return Density(what, kde, float(lo), float(hi))


def _from_quantiles(q05: float, q50: float, q95: float, what: str) -> Density:
    """Normal posterior of a log-scale parameter from its natural-scale quantiles."""
    return _normal(np.log(q50), (np.log(q95) - np.log(q05)) / (2 * Z90), what)


@dataclass
class Spec:
    """What to draw for one parameter."""

    prior: Density
    posterior: Density | None  # one feature's posterior
    means: np.ndarray | None  # posterior means across features (feature=None)
    xlabel: str


def _feature_row(
    names, feature: str | None, param: str, per_feature_prior: bool, where: str
) -> int | None:
    names = [str(n) for n in names]
    if feature is None:
        if per_feature_prior:
            raise ValueError(
                f"The prior of {param!r} differs per feature; pass `feature=` (e.g. {names[0]!r})."
            )
        return None
    if feature not in names:
        raise KeyError(
            f"Feature {feature!r} not found in the fit {where}." + V._suggest(feature, names)
        )
    return names.index(feature)


def _pick(values: np.ndarray, row: int | None) -> float:
    """A scalar prior value, or the feature's entry of a per-feature array."""
    return float(values[row]) if values.ndim else float(values)


def _unavailable(param: str, available: list[str], fit: Fit) -> KeyError:
    return KeyError(
        f"Parameter {param!r} not available for the {fit.kind} fit {fit.where}; available: "
        f"{', '.join(available)}."
    )


def _technical_spec(mdata: MuData, fit: Fit, param: str, feature: str | None) -> Spec:
    adata = mdata[fit.modality]
    table = adata.varm[fit.key]
    priors = fit.record["priors"]
    groups = [str(g) for g in fit.record["groups"]]
    available = ["baseline"] + [f"effect_{g}" for g in groups[1:]]
    available += [p for p in ("dispersion", "sigma", "nu") if p in priors]
    if param not in available:
        raise _unavailable(param, available, fit)
    name = "effect" if param.startswith("effect_") else param
    prior = priors[name]
    loc, scale = np.asarray(prior["loc"], dtype=float), np.asarray(prior["scale"], dtype=float)
    row = _feature_row(adata.var_names, feature, param, loc.ndim > 0 or scale.ndim > 0, fit.where)
    lognormal = str(prior["dist"]) == "lognormal"
    prior_d = _normal(_pick(loc, row), _pick(scale, row), "prior")
    xlabel = f"log {param}" if lognormal else f"{param} (link scale)"
    if row is None:
        means = (
            np.log(table[f"{param}_q50"].to_numpy())
            if lognormal
            else table[f"{param}_mean"].to_numpy()
        )
        return Spec(prior_d, None, means, xlabel)
    r = table.iloc[row]
    post = (
        _from_quantiles(r[f"{param}_q05"], r[f"{param}_q50"], r[f"{param}_q95"], "posterior")
        if lognormal
        else _normal(r[f"{param}_mean"], r[f"{param}_sd"], "posterior")
    )
    post.label = post.label.replace("posterior", f"posterior ({feature})", 1)
    return Spec(prior_d, post, None, xlabel)


def _trans_prior(fit: Fit, param: str, row: int | None) -> Density:
    """The prior of a trans site, as the fit's curve declares it."""
    prior = get_curve(str(fit.record["function"])).site_prior(param, fit.record["priors"], row)
    if prior.dist == "log_half_cauchy":
        return _log_half_cauchy("prior")
    return _normal(prior.loc, prior.scale, "prior")


def _trans_spec(mdata: MuData, fit: Fit, param: str, feature: str | None) -> Spec:
    adata = mdata[fit.modality]
    post = read_posterior_frame(adata, fit.key)
    available = sorted({c[: -len("_loc")] for c in post.columns if c.endswith("_loc")})
    if param not in available:
        raise _unavailable(param, available, fit)
    fitted = adata.varm[fit.key]["fitted"].to_numpy(dtype=bool)
    names = adata.var_names[fitted]
    row = _feature_row(names, feature, param, param == "eta_ref", fit.where)
    prior = _trans_prior(fit, param, row)
    xlabel = get_curve(str(fit.record["function"])).site_label(param)
    loc = post[f"{param}_loc"].to_numpy()[fitted]
    if row is None:
        return Spec(prior, None, loc, xlabel)
    scale = post[f"{param}_scale"].to_numpy()[fitted]
    return Spec(prior, _normal(loc[row], scale[row], f"posterior ({feature})"), None, xlabel)


def _cis_spec(fit: Fit, param: str, feature: str | None) -> Spec:
    record, priors = fit.record, fit.record["priors"]
    guides = record["guides"]
    control = np.asarray(guides["is_control"], dtype=bool)
    available = ["guide_effect", "log2_x_ntc", "reference_effect"]
    if param not in available:
        raise _unavailable(param, available, fit)
    if param == "log2_x_ntc":
        p = priors["log2_x_ntc"]
        post = _normal(record["log2_x_ntc_mean"], record["log2_x_ntc_sd"], "posterior")
        return Spec(
            _normal(p["loc"], p["scale"], "prior"),
            post,
            None,
            "log2 NTC dosage (log2 cis counts per unit size factor)",
        )
    sel = control if param == "reference_effect" else ~control
    if param == "reference_effect":
        p = priors["reference_effect"]
        prior = _student(p["df"], p["loc"], p["scale"], "prior")
    else:
        draws = guide_effect_prior_draws(priors, N_PRIOR_DRAWS, seed=0)
        prior = _sampled(draws, "prior: target_mean + target_scale x guide_z")
    sub = guides[sel]
    row = _feature_row(sub.index, feature, param, False, fit.where)
    xlabel = "guide effect (log2 fold change of the cis gene)"
    if row is None:
        return Spec(prior, None, sub["log2_effect_mean"].to_numpy(), xlabel)
    r = sub.iloc[row]
    return Spec(
        prior,
        _normal(r["log2_effect_mean"], r["log2_effect_sd"], f"posterior ({feature})"),
        None,
        xlabel,
    )


def _spec(mdata: MuData, fit: Fit, param: str, feature: str | None) -> Spec:
    if fit.kind == "technical":
        return _technical_spec(mdata, fit, param, feature)
    if fit.kind == "trans":
        return _trans_spec(mdata, fit, param, feature)
    return _cis_spec(fit, param, feature)


def _grid(spec: Spec) -> np.ndarray:
    lo, hi = spec.prior.lo, spec.prior.hi
    parts = []
    if spec.posterior is not None:
        lo, hi = min(lo, spec.posterior.lo), max(hi, spec.posterior.hi)
        parts.append(np.linspace(spec.posterior.lo, spec.posterior.hi, 300))
    if spec.means is not None and np.isfinite(spec.means).any():
        lo, hi = min(lo, np.nanmin(spec.means)), max(hi, np.nanmax(spec.means))
    return np.unique(np.concatenate([np.linspace(lo, hi, 500), *parts]))


@doc_params(ax=AX, figsize=FIGSIZE, return_fig=RETURN_FIG, show=SHOW)
def prior_posterior(
    mdata: MuData,
    key: str,
    param: str,
    *,
    modality: str | None = None,
    feature: str | None = None,
    figsize: tuple[float, float] = (5.0, 3.6),
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """The prior a fit used for one parameter against its posterior.

    Priors come from the run record (``uns[key]["priors"]``), so data-driven priors are drawn as
    they were used. Posteriors: technical parameters from the ``varm[key]`` summaries (Normal on
    the link scale; dispersion, sigma and nu log-Normal, drawn on the log scale), trans
    parameters from the variational ``loc``/``scale`` in ``varm["<key>_posterior"]`` (latent,
    unconstrained sites such as ``eta_ref``, ``log_k1``, ``log_n1``, ``z1``, ``log_lambda1``),
    cis parameters from the cis record (``log2_x_ntc``; ``guide_effect`` of targeting guides,
    whose prior is the marginal of the hierarchical prior; ``reference_effect`` of control
    guides). With ``feature`` (a var name, or a guide for cis effects) that feature's posterior
    density is drawn; without it a histogram of the posterior means of every feature is drawn
    against the prior (which shows how strongly the data move the parameters).

    Parameters
    ----------
    mdata
        A fitted screen.
    key
        ``key_added`` of the fit (technical / trans: ``mdata[modality].uns``; cis:
        ``mdata.uns``).
    param
        Parameter name; a wrong name raises a KeyError listing the available ones.
    modality
        Modality of a technical / trans fit (needed when ``key`` exists in several).
    feature
        Feature (or guide) whose posterior is drawn; required when the prior differs per
        feature (``baseline``, ``sigma``, ``eta_ref``).
    {figsize}
    {ax}
    {show}
    {return_fig}

    Returns
    -------
    The Axes, the Figure with ``return_fig=True``, or ``None`` when shown.

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=20, seed=0)
    >>> ds.tl.fit_technical(mdata, n_steps=50, progress=False)
    >>> ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=100, progress=False)
    >>> ax = ds.pl.prior_posterior(mdata, "dream_technical", "dispersion", modality="rna", show=False)
    >>> ax = ds.pl.prior_posterior(mdata, "dream_cis", "log2_x_ntc", show=False)
    """
    V.check_mudata(mdata)
    fits = find_fits(mdata, key, modality)
    if len(fits) > 1:
        raise ValueError(
            f"Fit {key!r} exists in several places ({', '.join(f.where for f in fits)}); pass `modality=`."
        )
    fit = fits[0]
    spec = _spec(mdata, fit, param, feature)
    fig, ax, created = single_axes(ax, figsize)
    x = _grid(spec)
    prior = spec.prior.pdf(x)
    ax.fill_between(x, prior, color=GREY, alpha=0.35, linewidth=0, gid="prior_fill")
    ax.plot(x, prior, color="0.35", linewidth=1.5, label=spec.prior.label, gid="prior")
    if spec.posterior is not None:
        post = spec.posterior.pdf(x)
        ax.fill_between(
            x, post, color=SHAPE_COLORS["decreasing"], alpha=0.25, linewidth=0, gid="posterior_fill"
        )
        ax.plot(
            x,
            post,
            color=SHAPE_COLORS["decreasing"],
            linewidth=2.0,
            label=spec.posterior.label,
            gid="posterior",
        )
    else:
        means = spec.means[np.isfinite(spec.means)]
        ax.hist(
            means,
            bins=int(np.clip(2 * np.sqrt(len(means)), 5, 40)),
            density=True,
            color=CURVE_COLOR,
            alpha=0.55,
            label=f"posterior means ({len(means)} {'guides' if fit.kind == 'cis' else 'features'})",
            gid="posterior_means",
        )
    ax.set_ylim(bottom=0)
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel("density")
    ax.set_title(f"{param}: prior vs posterior, {fit.where}", fontsize="medium")
    ax.legend(fontsize="x-small", frameon=False, loc="best")
    return finish(fig, ax, created=created, show=show, return_fig=return_fig)
