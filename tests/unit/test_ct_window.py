"""The store's one CT window is pooled from the CT training labels only: held-out labels and other modalities
never move it, and the pooled sketch percentiles agree with the percentiles of the pooled samples."""

from __future__ import annotations

import numpy as np

from storage.ct_window import store_ct_window
from storage.fingerprint import dataset_fingerprint
from storage.ingest_record import IngestRecord


def _record(name: str, modality: str, samples: dict[int, np.ndarray], labels: dict[str, str]) -> IngestRecord:
    fingerprint = dataset_fingerprint([[8, 8, 8]], [[1.0, 1.0, 1.0]], [{k: v.tolist() for k, v in samples.items()}])
    return IngestRecord(
        dataset=name, center="c", modality=modality, labels=labels, source="/x", fingerprint=fingerprint, cases=[]
    )


def test_the_window_pools_training_labels_and_ignores_held_out_ones_and_mr() -> None:
    rng = np.random.default_rng(0)
    liver, spleen = rng.normal(60, 20, 5000), rng.normal(100, 10, 3000)
    kidney, brain = rng.normal(900, 5, 4000), rng.normal(5000, 5, 4000)
    records = [
        _record("abdomen", "CT", {1: liver, 2: kidney}, {"1": "liver", "2": "kidney"}),
        _record("spleen", "CT", {1: spleen}, {"1": "spleen"}),
        _record("head", "MR", {1: brain}, {"1": "brain"}),
    ]
    low, high = store_ct_window(records, ["kidney*"])
    expected = np.percentile(np.concatenate([liver, spleen]), [0.5, 99.5])
    np.testing.assert_allclose([low, high], expected, atol=2.0)  # a 0.1 % sketch per label, not the samples
    assert high < 200  # kidney (900 HU) is held out and the MR brain is not CT

    _, with_kidney = store_ct_window(records, [])
    assert with_kidney > 800
    assert store_ct_window([records[2]], []) is None
