"""Memory planner: where the budget comes from and which sizes it picks."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from dream_sc.engine import memory
from dream_sc.engine.config import FitConfig
from dream_sc.engine.memory import (
    DEFAULT_MAX_BATCH,
    available_memory,
    estimate_peak_bytes,
    feature_chunks,
    plan_fit,
)

GB = 1024**3


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: cgroup files, SLURM variables and psutil numbers set per test."""
    files: dict[str, int] = {}
    state = SimpleNamespace(files=files, available=64 * GB, rss=1 * GB)
    monkeypatch.setattr(memory, "_read_int", lambda path: files.get(path))
    monkeypatch.setattr(
        memory.psutil, "virtual_memory", lambda: SimpleNamespace(available=state.available)
    )
    monkeypatch.setattr(
        memory.psutil,
        "Process",
        lambda: SimpleNamespace(memory_info=lambda: SimpleNamespace(rss=state.rss)),
    )
    for var in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU", "SLURM_CPUS_ON_NODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    return state


def _cfg(**changes) -> FitConfig:
    """A fit configuration with the planner's former defaults (500 steps, 100 draws)."""
    return FitConfig(**{"n_steps": 500, "n_samples": 100, **changes})


def test_read_int_parses_cgroup_files(tmp_path):
    cases = {"limit": ("1073741824\n", 1073741824), "max": ("max\n", None), "empty": ("", None)}
    cases["v1_unlimited"] = (str(9223372036854771712), None)
    cases["garbage"] = ("lots", None)
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        assert memory._read_int(str(path)) == expected, name
    assert memory._read_int(str(tmp_path / "missing")) is None


def test_explicit_budget_wins(machine):
    machine.files["/sys/fs/cgroup/memory.max"] = 1 * GB
    assert available_memory(_cfg(max_memory_gb=3.5)) == (int(3.5 * GB), "user budget")


def test_psutil_when_nothing_else(machine):
    assert available_memory() == (64 * GB, "psutil")


def test_cgroup_v2_limit_minus_usage(machine):
    machine.files["/sys/fs/cgroup/memory.max"] = 8 * GB
    machine.files["/sys/fs/cgroup/memory.current"] = 3 * GB
    assert available_memory() == (5 * GB, "cgroup v2 memory.max")


def test_cgroup_v1_limit_minus_usage(machine):
    machine.files["/sys/fs/cgroup/memory/memory.limit_in_bytes"] = 6 * GB
    machine.files["/sys/fs/cgroup/memory/memory.usage_in_bytes"] = 2 * GB
    assert available_memory() == (4 * GB, "cgroup v1 memory.limit_in_bytes")


def test_slurm_per_node_and_per_cpu(machine, monkeypatch):
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "4096")  # MB
    assert available_memory() == (3 * GB, "SLURM allocation")  # minus the 1 GB RSS
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "2048")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert available_memory() == (7 * GB, "SLURM allocation")


def test_smallest_limit_wins(machine, monkeypatch):
    machine.available = 10 * GB
    machine.files["/sys/fs/cgroup/memory.max"] = 12 * GB
    monkeypatch.setenv("SLURM_MEM_PER_NODE", str(3 * 1024))
    assert available_memory() == (2 * GB, "SLURM allocation")


def test_cuda_device_memory_bounds_the_budget(machine, monkeypatch):
    import torch

    machine.available = 64 * GB
    free = {0: 6 * GB, 1: 3 * GB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 16 * GB))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    on = lambda device, **kw: _cfg(device=torch.device(device), **kw)  # noqa: E731
    assert available_memory(on("cuda")) == (6 * GB, "free memory of cuda:0")
    assert available_memory(on("cuda:1")) == (3 * GB, "free memory of cuda:1")
    assert available_memory(on("cpu")) == (64 * GB, "psutil")
    assert available_memory(on("cuda:1", max_memory_gb=4)) == (4 * GB, "user budget")
    plan = plan_fit(20_000, 5_000, _cfg(n_steps=600, device=torch.device("cuda:1")), density=1.0)
    assert plan.as_dict()["memory_source"] == "free memory of cuda:1"
    assert plan.estimated_peak_bytes <= 1.5 * GB  # half of the device's free memory


def test_peak_estimate_adds_up():
    cfg = _cfg(n_steps=600)
    peak = estimate_peak_bytes(10_000, 1000, 200, cfg, density=0.1, draws=100, noise_width=9)
    step = 1000 * 200 * memory.BYTES_PER_ENTRY
    data = 10_000 * 200 * 0.1 * memory.BYTES_PER_NONZERO
    assert peak >= step + data
    bigger = estimate_peak_bytes(10_000, 2000, 200, cfg, density=0.1, draws=100, noise_width=9)
    assert bigger - peak == 1000 * 200 * memory.BYTES_PER_ENTRY


def test_plan_keeps_full_problem_when_it_fits(machine):
    plan = plan_fit(500, 300, _cfg(max_memory_gb=8), density=0.1)
    assert (plan.config.batch_size, plan.feature_chunk) == (500, 300)
    plan = plan_fit(50_000, 300, _cfg(max_memory_gb=8), density=0.1)
    assert plan.config.batch_size == DEFAULT_MAX_BATCH
    assert plan.config.n_steps == 500  # the planned configuration is the fit's, sized
    assert plan.as_dict()["memory_source"] == "user budget"
    assert plan.as_dict()["available_gb"] == 8.0


def test_plan_halves_chunk_then_batch_to_fit(machine):
    kw = {"density": 1.0, "noise_width": 9}
    plan = plan_fit(20_000, 5_000, _cfg(n_steps=600, max_memory_gb=0.5), **kw)
    assert plan.feature_chunk < 5_000
    assert plan.estimated_peak_bytes <= 0.25 * GB  # half of the budget
    # the chunk is halved first (down to 64 features), only then the batch
    tiny = plan_fit(20_000, 5_000, _cfg(n_steps=600, max_memory_gb=0.02), **kw)
    assert tiny.feature_chunk == 40  # 5000 -> 2500 -> ... -> 79 -> 40 (first size <= 64)
    assert tiny.config.batch_size < DEFAULT_MAX_BATCH


def test_plan_keeps_user_sizes_and_warns(machine, caplog):
    with caplog.at_level(logging.WARNING, logger="dream_sc"):
        plan = plan_fit(
            100_000,
            20_000,
            _cfg(batch_size=50_000, max_memory_gb=1),
            density=1.0,
            feature_chunk=20_000,
        )
    assert (plan.config.batch_size, plan.feature_chunk) == (50_000, 20_000)
    assert "exceeds the budget" in caplog.text


def test_feature_chunks_keep_groups_together():
    groups = np.array([2, 0, 0, 1, 1, 1, 2, 3])
    chunks = feature_chunks(8, 3, groups)
    assert [c.tolist() for c in chunks] == [[1, 2], [3, 4, 5], [0, 6, 7]]
    assert [c.tolist() for c in feature_chunks(5, 2)] == [[0, 1], [2, 3], [4]]


def test_trans_plans_budget_the_curves_autograd_intermediates():
    """A trans step costs more per entry than the technical step, most for two Hill terms."""
    from dream_sc.models.curves import CURVES

    TRANS_BYTES_PER_ENTRY = {name: curve.bytes_per_entry for name, curve in CURVES.items()}

    kw = {"density": 0.15, "draws": 100, "noise_width": 9}
    cfg = _cfg(n_steps=300)
    per = {
        fn: estimate_peak_bytes(30_000, 1024, 30_000, cfg, bytes_per_entry=b, **kw)
        - estimate_peak_bytes(30_000, 1024, 30_000, cfg, bytes_per_entry=0, **kw)
        for fn, b in TRANS_BYTES_PER_ENTRY.items()
    }
    assert per["polynomial"] < per["single_hill"] < per["additive_hill"]
    # the atlas run (additive Hill, 1,024 cells x 29,999 genes) measured ~4.2 GiB for the step
    assert per["additive_hill"] / 1024**3 > 4.2
    plain = plan_fit(
        30_000, 30_000, _cfg(n_steps=300, max_memory_gb=16), density=0.15, noise_width=9
    )
    curved = plan_fit(
        30_000,
        30_000,
        _cfg(n_steps=300, max_memory_gb=16),
        density=0.15,
        noise_width=9,
        bytes_per_entry=TRANS_BYTES_PER_ENTRY["additive_hill"],
    )
    assert curved.estimated_peak_bytes > plain.estimated_peak_bytes
    assert curved.estimated_peak_bytes <= 0.5 * 16 * 1024**3  # still one chunk, within half


def _cis_data(n_cells: int, n_guides: int, n_groups: int = 2):
    """Cis data of the given size (the planner reads shapes only)."""
    from dream_sc.models.cis import CisData

    return CisData(
        y=np.ones(n_cells),
        log_sf=np.zeros(n_cells),
        group=np.zeros(n_cells, dtype=int),
        tech_effect_prior=np.zeros(n_groups),
        assignment=np.zeros((n_cells, n_guides), dtype=np.float32),
        is_cis_guide=np.arange(n_guides) < n_guides // 2,
        log_r=1.0,
        log2_x_ntc_prior=3.0,
    )


def test_cis_peak_adds_up_its_phases():
    """Every phase by hand: 10,000 cells x 8 guides, 2 groups, 100 samples, batches of 4,096."""
    from dream_sc.models.cis import CELL_CHUNK, GRID_POINTS, N_QUADRATURE

    data = _cis_data(10_000, 8)
    got = memory.cis_peak_bytes(data, 4096, _cfg(n_samples=100))
    n_sites = 2 * 8 + 2 + 4
    assert got["assignment"] == 10_000 * 8 * 8  # float32 on the host and on the device
    assert got["step"] == 4096 * (2 * 8 * 4 + N_QUADRATURE * memory.CIS_BYTES_PER_NODE)
    assert got["laplace"] == (
        10_000 * 8 * 8  # the float64 model's assignment
        + 10_000 * (2 * 8 * 8 + N_QUADRATURE * 2 * memory.CIS_BYTES_PER_NODE)
        + 4 * n_sites**2 * 8  # the Hessian and its inverse / factor
    )
    chunk = min(10_000, CELL_CHUNK)
    assert got["dosage"] == (
        10_000 * 100 * memory.CIS_BYTES_PER_SAMPLE
        + chunk * (GRID_POINTS * memory.CIS_BYTES_PER_GRID_POINT + 8 * 4)
        + memory.CIS_SITE_DRAWS * (n_sites + 2 * 8) * 8
    )
    phases = (got["step"], got["laplace"], got["dosage"])
    assert got["peak"] == got["assignment"] + max(phases)  # the phases run one after another
    # the step is the only phase that grows with the batch: 4,096 more cells cost exactly that
    bigger = memory.cis_peak_bytes(data, 8192, _cfg(n_samples=100))
    assert bigger["step"] - got["step"] == 4096 * (2 * 8 * 4 + N_QUADRATURE * 40)
    assert {k: bigger[k] for k in ("assignment", "laplace", "dosage")} == {
        k: got[k] for k in ("assignment", "laplace", "dosage")
    }


def test_cis_plan_keeps_full_batches_when_they_fit(machine):
    plan = memory.plan_cis(_cis_data(3000, 10), _cfg(max_memory_gb=8))
    assert plan.config.batch_size == 3000  # all cells, as before the planner
    assert plan.config.n_steps == 500
    plan = memory.plan_cis(_cis_data(120_000, 10), _cfg(max_memory_gb=8))
    assert plan.config.batch_size == memory.CIS_MAX_BATCH
    assert plan.as_dict()["memory_source"] == "user budget"
    assert plan.estimated_peak_bytes <= 4 * GB
    user = memory.plan_cis(_cis_data(3000, 10), _cfg(batch_size=700, max_memory_gb=8))
    assert user.config.batch_size == 700


def test_cis_plan_halves_the_batch_to_fit(machine):
    """High MOI without a Laplace start: 200,000 cells x 5,000 guides, where the step dominates."""
    data = _cis_data(200_000, 5000)
    cfg = _cfg(n_samples=10)
    full = memory.cis_peak_bytes(data, memory.CIS_MAX_BATCH, cfg, laplace=False)
    assert full["laplace"] == 0
    assert full["step"] == 50_000 * (2 * 5000 * 4 + 24 * 40) > full["dosage"]
    # a budget (half of max_memory_gb) between the 25,000- and 50,000-cell peaks
    half = memory.cis_peak_bytes(data, 25_000, cfg, laplace=False)["peak"]
    assert half == full["assignment"] + full["dosage"]  # the dosage draws dominate there
    budget_gb = 2 * (half + (full["peak"] - half) / 2) / GB
    plan = memory.plan_cis(data, _cfg(n_samples=10, max_memory_gb=budget_gb), laplace=False)
    assert plan.config.batch_size == 25_000
    assert plan.estimated_peak_bytes == half
    # the Laplace start's full-data float64 pass does not shrink with the batch: refused
    with pytest.raises(memory.MemoryBudgetError, match="laplace"):
        memory.plan_cis(data, _cfg(n_samples=10, max_memory_gb=budget_gb))


def test_cis_plan_refuses_a_fit_too_large_before_any_work(machine):
    """1M cells x 2,000 guides: the assignment alone is 16 GB."""
    data = SimpleNamespace(
        assignment=SimpleNamespace(shape=(1_000_000, 2000)), tech_effect_prior=np.zeros(3)
    )
    with pytest.raises(memory.MemoryBudgetError, match="too large for the memory budget"):
        memory.plan_cis(data, _cfg(max_memory_gb=16))
    assert issubclass(memory.MemoryBudgetError, MemoryError)


def test_fit_cis_raises_the_budget_error_before_fitting(monkeypatch):
    """``fit_cis`` plans before the Laplace start: a tiny budget stops it at once."""
    import dream_sc as ds
    from dream_sc.engine import cis as engine_cis
    from dream_sc.tl import _cis

    mdata = ds.datasets.simulate_screen(n_cells=300, n_genes=10, seed=0)
    ds.tl.fit_technical(mdata, n_steps=20, progress=False)
    called = []
    monkeypatch.setattr(_cis, "fit_cis_model", lambda *a, **k: called.append(1))
    monkeypatch.setattr(engine_cis, "fit_cis_model", lambda *a, **k: called.append(1))
    ds.settings.max_memory_gb, before = 1e-6, ds.settings.max_memory_gb
    try:
        with pytest.raises(MemoryError, match="too large for the memory budget"):
            ds.tl.fit_cis(mdata, cis_feature="GFI1B", n_steps=20, progress=False)
    finally:
        ds.settings.max_memory_gb = before
    assert not called
