"""The ``dream-sc`` command line: ``demo`` and ``run``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import yaml

logger = logging.getLogger("dream_sc")

#: Functions a ``run`` configuration may call, by the name used in the YAML file.
STEP_FUNCTIONS = {
    "sum_factors": ("pp", "sum_factors"),
    "register_modality": ("pp", "register_modality"),
    "splicing_from_junctions": ("pp", "splicing_from_junctions"),
    "isoform_usage": ("pp", "isoform_usage"),
    "fit_technical": ("tl", "fit_technical"),
    "fit_cis": ("tl", "fit_cis"),
    "fit_trans": ("tl", "fit_trans"),
    "test_trans": ("tl", "test_trans"),
    "fit_screen": ("tl", "fit_screen"),
    "calibration_check": ("tl", "calibration_check"),
    "assign_guides": ("pp", "assign_guides"),
    "annotate_junctions": ("pp", "annotate_junctions"),
}
#: Arguments that name files or folders: relative values are taken from the configuration's folder.
PATH_ARGUMENTS = ("checkpoint", "gtf")


def _write_tables(mdata, out: Path) -> list[Path]:
    import dream_sc as ds
    from dream_sc._storage import stored_fits

    written = []
    for fit in stored_fits(mdata):
        if fit.kind == "cis":
            path = out / f"{fit.key}_guides.csv"
            ds.get.cis_dosage(mdata, key=fit.key).to_csv(path)
            written.append(path)
        elif fit.kind == "trans":
            path = out / f"{fit.key}_{fit.modality}.csv"
            ds.get.trans_results(mdata, modality=fit.modality, key=fit.key).to_csv(path)
            written.append(path)
    return written


def _step_tables(name: str, kwargs: dict, returned, out: Path) -> list[Path]:
    """Tables of a step whose results ``_write_tables`` does not cover (screens, calibration)."""
    import dream_sc as ds

    modality = kwargs.get("modality", "rna")
    if name == "fit_screen":
        key = kwargs.get("key_added", "dream_screen")
        path = out / f"{key}_{modality}.csv"
        ds.get.screen_results(returned, modality=modality, key=key).to_csv(path)
        return [path]
    if name == "calibration_check":
        path = out / f"{kwargs.get('key', 'dream_trans')}_{modality}_calibration.csv"
        returned.to_csv(path)
        return [path]
    return []


def _resolve_paths(kwargs: dict, base: Path) -> dict:
    """``kwargs`` with relative file arguments (:data:`PATH_ARGUMENTS`) made relative to ``base``."""
    out = dict(kwargs)
    for name in PATH_ARGUMENTS:
        value = out.get(name)
        if isinstance(value, str) and not Path(value).is_absolute():
            out[name] = str(base / value)
    return out


def _write_figures(mdata, out: Path, modalities: Sequence[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import dream_sc as ds

    written = []

    def save(fig, name: str) -> None:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    save(ds.pl.cis_dosage(mdata, show=False, return_fig=True), "cis_dosage")
    save(ds.pl.loss(mdata, None, show=False, return_fig=True), "loss")
    for mod in modalities:
        results = ds.get.trans_results(mdata, modality=mod)
        top = results[results["fitted"]].sort_values("score", ascending=False).index[:6].tolist()
        save(
            ds.pl.dose_response(mdata, top, modality=mod, show=False, return_fig=True),
            f"dose_response_{mod}",
        )
        save(
            ds.pl.trans_summary(mdata, modality=mod, show=False, return_fig=True),
            f"trans_summary_{mod}",
        )
        save(
            ds.pl.calibration(mdata, modality=mod, show=False, return_fig=True),
            f"calibration_{mod}",
        )
    return written


def demo(out: Path, *, n_steps_scale: float = 1.0, seed: int = 0, figures: bool = True) -> Path:
    """Run the whole pipeline on the bundled example and write results, tables and figures.

    Parameters
    ----------
    out
        Output folder (created).
    n_steps_scale
        Multiplies every step's default number of SVI steps (e.g. 0.2 for a quick look).
    seed
        Random seed.
    figures
        Also write PNG figures.

    Returns
    -------
    Path of ``results.h5mu``.
    """
    import dream_sc as ds

    out.mkdir(parents=True, exist_ok=True)
    steps = lambda n: max(20, int(n * n_steps_scale))  # noqa: E731
    start = time.perf_counter()
    mdata = ds.datasets.example()
    modalities = ("rna", "splicing", "isoform")
    for mod in modalities:
        ds.tl.fit_technical(mdata, modality=mod, n_steps=steps(200), seed=seed)
    ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=steps(300), seed=seed)
    for mod in modalities:
        function = "additive_hill" if mod == "rna" else "single_hill"
        ds.tl.fit_trans(mdata, modality=mod, function=function, n_steps=steps(300), seed=seed)
    path = out / "results.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata.write(path)
    tables = _write_tables(mdata, out)
    figs = _write_figures(mdata, out, modalities) if figures else []
    logger.warning(
        "demo finished in %.0fs: %s, %d tables, %d figures in %s",
        time.perf_counter() - start,
        path.name,
        len(tables),
        len(figs),
        out,
    )
    return path


def run(config_path: Path) -> Path:
    """Run the steps of a YAML configuration.

    The file holds ``input`` (an h5mu path), ``output`` (h5mu path), optional ``tables`` (a
    folder for CSV tables) and ``steps``: a list of one-key mappings ``{function: {arguments}}``
    run in order, where ``function`` is one of :data:`STEP_FUNCTIONS`. Paths are relative to
    the configuration file. The output is written after every step, so the results of finished
    steps survive a failure in a later one. Example::

        input: screen.h5mu
        output: results.h5mu
        tables: tables
        steps:
          - fit_technical: {modality: rna, technical_key: cell_line}
          - fit_cis: {cis_feature: GFI1B}
          - fit_trans: {modality: rna, function: additive_hill}

    Whole screens and checks: ``fit_screen`` (tables: the screen-wide table of
    :func:`dream_sc.get.screen_results`), ``calibration_check`` (tables: its null-screen
    table), ``assign_guides`` and ``annotate_junctions`` (``gtf:`` a path). ``checkpoint`` and
    ``gtf`` paths are relative to the configuration file.

    Parameters
    ----------
    config_path
        The YAML file.

    Returns
    -------
    The output path.
    """
    import mudata

    import dream_sc as ds

    config = yaml.safe_load(Path(config_path).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a mapping with 'input', 'output' and 'steps'.")
    missing = [k for k in ("input", "output", "steps") if k not in config]
    if missing:
        raise ValueError(f"{config_path}: missing key(s) {missing}; see `dream-sc run --help`.")
    base = Path(config_path).parent
    steps = []
    for number, step in enumerate(config["steps"], start=1):
        if not isinstance(step, dict) or len(step) != 1:
            raise ValueError(
                f"{config_path}: step {number} must be a one-key mapping {{function: {{arguments}}}}."
            )
        ((name, kwargs),) = step.items()
        if name not in STEP_FUNCTIONS:
            raise ValueError(
                f"{config_path}: unknown step {name!r} (step {number}); choose from {sorted(STEP_FUNCTIONS)}."
            )
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(
                f"{config_path}: the arguments of step {number} ({name}) must be a mapping "
                f"{{argument: value}}; got {type(kwargs).__name__}."
            )
        steps.append((name, _resolve_paths(kwargs or {}, base)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata = mudata.read_h5mu(base / config["input"])
    output = base / config["output"]
    output.parent.mkdir(parents=True, exist_ok=True)
    folder = base / config["tables"] if config.get("tables") else None
    extra_tables = []
    for name, kwargs in steps:
        namespace, func = STEP_FUNCTIONS[name]
        logger.info("run: %s(%s)", name, ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
        returned = getattr(getattr(ds, namespace), func)(mdata, **kwargs)
        if folder is not None:
            extra_tables.append((name, kwargs, mdata if name == "fit_screen" else returned))
        # results of finished steps survive a crash in a later step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mdata.write(output)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _write_tables(mdata, folder)
        for name, kwargs, returned in extra_tables:
            _step_tables(name, kwargs, returned, folder)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dream-sc``."""
    parser = argparse.ArgumentParser(prog="dream-sc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the full pipeline on the bundled example screen")
    p_demo.add_argument("--out", type=Path, required=True, help="output folder")
    p_demo.add_argument("--quick", action="store_true", help="5x fewer SVI steps (a quick look)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--no-figures", action="store_true")
    p_run = sub.add_parser(
        "run", help="run the steps of a YAML configuration", description=run.__doc__
    )
    p_run.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    import dream_sc as ds

    ds.settings.verbosity = 3 if args.verbose else 2
    ds.settings.progress_bar = sys.stderr.isatty()
    if args.command == "demo":
        demo(
            args.out,
            n_steps_scale=0.2 if args.quick else 1.0,
            seed=args.seed,
            figures=not args.no_figures,
        )
    else:
        run(args.config)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
