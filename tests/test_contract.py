import dream_sc as ds

NAMES = {
    "datasets": ["simulate_screen", "example"],
    "pp": ["sum_factors", "register_modality", "splicing_from_junctions", "isoform_usage"],
    "tl": ["fit_technical", "fit_cis", "fit_trans", "test_trans"],
    "get": ["cis_dosage", "trans_results", "trans_curves"],
}


def test_contract_names_import():
    for namespace, names in NAMES.items():
        module = getattr(ds, namespace)
        for name in names:
            assert callable(getattr(module, name)), f"ds.{namespace}.{name}"
    assert ds.settings.n_samples > 0
    assert isinstance(ds.__version__, str)
