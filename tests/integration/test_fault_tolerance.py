"""Fault tolerance of training on the session's Ray head: a worker killed between two checkpoints, a failed run
resumed by name. On CPU with fixed seeds a run that was interrupted must end with exactly the weights and per-step
losses of an uninterrupted one, which only holds if every random state and the data position were restored."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from pipelines import stages
from pipelines.outcomes import TrainingOutcome
from pipelines.settings import Settings
from pipelines.training_flow import train_flow
from promptseg.training.loop import RunNameError, TrainingFailedError
from storage.reports import PreprocessReport

SHORT = {"steps": 12, "checkpoint_every": 4, "num_workers": 2, "batch_size": 2, "size": "tiny"}
NO_EXTRAS = {"register": False, "evaluate": False}


@pytest.fixture(scope="module")
def reference(settings: Settings, preprocessed: PreprocessReport, ray_head: str) -> TrainingOutcome:
    """An uninterrupted short run, launched as a Prefect flow run."""
    state = train_flow(
        run_name="ft-reference", register_challenger=False, evaluate=False, options=SHORT, return_state=True
    )
    assert state.is_completed()
    return state.result()


def _history(settings: Settings, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(settings.registry.tracking_uri).get_metric_history(run_id, key)}


def _assert_same_run(settings: Settings, result: TrainingOutcome, reference: TrainingOutcome) -> None:
    weights, expected = (load_file(str(r.checkpoint_dir / "model.safetensors")) for r in (result, reference))
    assert weights.keys() == expected.keys()
    different = [k for k in weights if not torch.equal(weights[k], expected[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    losses = _history(settings, result.run_id, "loss")
    assert losses == _history(settings, reference.run_id, "loss") and sorted(losses) == list(range(1, 13))


def test_a_worker_killed_between_checkpoints_restarts_at_the_last_one_and_matches(
    settings: Settings, reference: TrainingOutcome
) -> None:
    result = stages.train(settings, run_name="ft-killed", fail_after_checkpoint=1, max_failures=1, **NO_EXTRAS, **SHORT)
    assert list(_history(settings, result.run_id, "resumed_from_step").values()) == [4.0]
    _assert_same_run(settings, result, reference)


def test_a_failed_run_resumes_by_name_from_its_last_checkpoint(settings: Settings, reference: TrainingOutcome) -> None:
    with pytest.raises(TrainingFailedError, match="ft-resumed"):
        stages.train(settings, run_name="ft-resumed", fail_after_checkpoint=2, max_failures=0, **NO_EXTRAS, **SHORT)
    result = stages.train(settings, run_name="ft-resumed", resume=True, **NO_EXTRAS)
    assert list(_history(settings, result.run_id, "resumed_from_step").values()) == [8.0]
    _assert_same_run(settings, result, reference)


def test_run_names_are_never_reused_silently(settings: Settings, reference: TrainingOutcome) -> None:
    with pytest.raises(RunNameError, match="exists"):
        stages.train(settings, run_name="ft-reference", **NO_EXTRAS, **SHORT)
    with pytest.raises(RunNameError, match="no training run named"):
        stages.train(settings, run_name="never-ran", resume=True, **NO_EXTRAS)
