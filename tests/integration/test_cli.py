"""The command line over the real flows: `ingest` exit codes and `--strict`, `nightly` on the workspace and
resolution its global options name, and training progress from rank 0 with the addresses to look at."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner, Result

from pipelines.cli import app
from storage.ingest_record import IngestRecord
from storage.reports import PreprocessReport
from storage.synthetic import write_synthetic_datasets


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command exports the settings in force (pipelines.environment); the session's come back afterwards."""
    for variable in ("PROMPTSEG_WORKSPACE", "PROMPTSEG_RESOLUTION"):
        monkeypatch.setenv(variable, os.environ[variable])


def _invoke(*arguments: str | Path) -> Result:
    return CliRunner().invoke(app, [str(argument) for argument in arguments])


def test_ingest_lands_the_good_cases_and_strict_lands_nothing(prefect_harness: None, tmp_path: Path) -> None:
    source = write_synthetic_datasets(tmp_path / "src", n_cases=2, seed=5)[0]
    (source / "labelsTr" / "center-a_001.nii.gz").write_bytes(b"not a NIfTI file")

    strict = _invoke("--workspace", tmp_path / "strict", "ingest", "--strict", source)
    assert strict.exit_code == 1, strict.output
    assert "1 case(s) and 0 source(s) rejected; nothing was ingested (--strict)" in strict.stderr
    assert not list((tmp_path / "strict" / "raw").glob("*.json"))

    plain = _invoke("--workspace", tmp_path / "plain", "ingest", source)
    assert plain.exit_code == 1, plain.output
    assert json.loads(plain.stdout)["datasets"][0]["rejected"] == 1
    assert "synth-center-a labelsTr/center-a_001.nii.gz:" in plain.stderr
    assert "1 case(s) and 0 source(s) rejected; 1 good case(s) ingested" in plain.stderr
    assert "ingest synth-center-a: case 2/2 center-a_001 rejected" in plain.stderr  # per-case progress
    record = IngestRecord.load(tmp_path / "plain" / "raw" / "synth-center-a.json")
    assert [case.case for case in record.cases] == ["center-a_000"]


def test_nightly_runs_on_the_workspace_and_resolution_of_the_global_options(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # exported by mlflow once an earlier test logged a run
    workspace = tmp_path / "elsewhere"
    result = _invoke("--workspace", workspace, "--resolution", "96", "nightly", "--source", tmp_path / "vanished")
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1].startswith("error: nightly step 'ingest' failed")
    client = MlflowClient(f"sqlite:///{workspace.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("promptseg-nightly")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.tags["status"] == "failed" and run.data.tags["failed_step"] == "ingest"
    report = json.loads(
        Path(client.download_artifacts(run.info.run_id, "nightly_report.json", str(tmp_path))).read_text()
    )
    assert (report["workspace"], report["resolution"]) == (str(workspace.resolve()), 96)


def test_train_prints_progress_from_rank_0_and_where_to_look(preprocessed: PreprocessReport, ray_head: str) -> None:
    arguments = ("--steps", "12", "--checkpoint-every", "6", "--run-name", "cli-progress", "--no-register")
    result = _invoke("train", *arguments, "--no-evaluate")
    assert result.exit_code == 0, result.output
    steps = [line for line in result.stderr.splitlines() if line.startswith("train: step")]
    assert steps[0].startswith("train: step 1/12") and steps[-1].startswith("train: step 12/12"), steps
    assert len([line for line in steps if "step 12/12" in line]) == 1  # one rank reports, of the two workers
    assert all("loss" in line and "episodes/s" in line and "ETA" in line for line in steps)
    assert "mlflow ui: mlflow ui --backend-store-uri sqlite:///" in result.stderr
    assert "ray dashboard: http://127.0.0.1:" in result.stderr
