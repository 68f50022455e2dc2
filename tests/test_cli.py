from __future__ import annotations

import warnings

import mudata
import pytest
import yaml

import dream_sc as ds
from dream_sc.cli import main


@pytest.fixture
def screen_file(tiny_screen, tmp_path):
    path = tmp_path / "screen.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_screen.write(path)
    return path


def _config(tmp_path, steps):
    cfg = {
        "input": "screen.h5mu",
        "output": "out/results.h5mu",
        "tables": "out/tables",
        "steps": steps,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_config_writes_results_and_tables(screen_file, tmp_path):
    steps = [
        {"fit_technical": {"n_steps": 10, "seed": 0}},
        {"fit_cis": {"cis_feature": "GFI1B", "n_steps": 30, "seed": 0}},
        {"fit_trans": {"function": "single_hill", "n_steps": 10, "seed": 0, "test": False}},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(_config(tmp_path, steps))]) == 0
        out = mudata.read_h5mu(tmp_path / "out" / "results.h5mu")
    assert len(ds.get.trans_results(out)) == out["rna"].n_vars
    tables = sorted(p.name for p in (tmp_path / "out" / "tables").iterdir())
    assert tables == ["dream_cis_guides.csv", "dream_trans_rna.csv"]


def test_run_keeps_finished_steps_when_a_later_one_fails(screen_file, tmp_path):
    steps = [
        {"fit_technical": {"n_steps": 10, "seed": 0}},
        {"fit_cis": {"cis_feature": "NOT_A_GENE", "n_steps": 30}},
    ]
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        main(["run", str(_config(tmp_path, steps))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = mudata.read_h5mu(tmp_path / "out" / "results.h5mu")
    assert "dream_technical" in out["rna"].varm
    assert "dream_cis" not in out.uns


def test_run_rejects_unknown_step(screen_file, tmp_path):
    with pytest.raises(ValueError, match=r"unknown step 'fit_everything' \(step 1\)"):
        main(["run", str(_config(tmp_path, [{"fit_everything": {}}]))])


def test_run_config_fits_a_screen_with_checkpoint_and_calibration(tmp_path):
    mdata = ds.datasets.simulate_screen(
        n_cells=360,
        n_genes=14,
        n_junctions=0,
        n_isoform_genes=0,
        n_targets=2,
        guides_per_target=3,
        n_ntc_guides=3,
        seed=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.write(tmp_path / "screen.h5mu")
    steps = [
        {
            "fit_screen": {
                "n_steps": {"technical": 10, "cis": 10, "trans": 10},
                "trans_kwargs": {"refine_intervals": False, "n_permutations": 2},
                "technical_key": "cell_line",
                "seed": 0,
                "checkpoint": "ckpt",
            }
        },
        {"calibration_check": {"key": "dream_trans_GFI1B", "n_null_screens": 1}},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["run", str(_config(tmp_path, steps))]) == 0
        out = mudata.read_h5mu(tmp_path / "out" / "results.h5mu")
    table = ds.get.screen_results(out)
    assert set(table["target"]) == set(out.uns["dream_screen"]["targets"])
    tables = sorted(p.name for p in (tmp_path / "out" / "tables").iterdir())
    assert "dream_screen_rna.csv" in tables
    assert "dream_trans_GFI1B_rna_calibration.csv" in tables
    assert (tmp_path / "ckpt").is_dir()  # relative to the configuration file


def test_run_rejects_arguments_that_are_not_a_mapping(screen_file, tmp_path):
    with pytest.raises(
        ValueError, match=r"the arguments of step 1 \(fit_technical\) must be a mapping"
    ):
        main(["run", str(_config(tmp_path, [{"fit_technical": [1, 2]}]))])
