"""The command line without services: user errors are one line and exit code 2, `--help` creates nothing,
`--version`, the choices listed as enums, and the settings the global options give to the nightly flow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from pipelines.cli import app
from pipelines.cli.choices import MaskFormat, Profile, Size, VolumeFormat
from pipelines.settings import Settings
from promptseg.evaluation.report import PROFILES
from promptseg.nets.factory import MODEL_SIZES
from promptseg.serving.api_models import SegmentRequest


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command exports the settings in force (pipelines.environment); the session's come back afterwards."""
    for variable in ("PROMPTSEG_WORKSPACE", "PROMPTSEG_RESOLUTION"):
        monkeypatch.setenv(variable, os.environ[variable])


def _invoke(*arguments: str) -> Result:
    return CliRunner().invoke(app, [str(argument) for argument in arguments])


def _one_error_line(result: Result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and all(text in line for text in expected), line


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_verify_reports_every_source_and_case_and_goes_on_after_a_bad_one(tmp_path: Path) -> None:
    """A source that cannot be read is one problem under its name, and the sources after it are still verified."""
    regions = tmp_path / "regions"
    regions.mkdir()
    meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "tumor": [1, 2]}, "file_ending": ".nii.gz"}
    (regions / "dataset.json").write_text(json.dumps(meta))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("dataset: d\nmodality: CT\nlabels: {1: liver}\ncases:\n  - id: a\n    image: a.nii.gz\n")
    result = _invoke("verify", tmp_path / "nope", regions, manifest)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    [missing] = report["nope"]
    assert missing["case"] is None and missing["file"] == str(tmp_path / "nope")
    assert missing["problem"].startswith("no such file or folder")
    [region] = report["regions"]
    assert "region labels" in region["problem"] and "tumor" in region["problem"]
    assert report["d"] == [{"case": "a", "file": "manifest.yaml", "problem": "case 1 has no 'label'"}]


def test_labels_that_are_not_integers_are_one_line(tmp_path: Path) -> None:
    query = tmp_path / "q.png"
    query.write_bytes(b"")
    result = _invoke("query", "--task", "t", "--query", query, "--labels", "a,b", "--url", "http://127.0.0.1:9")
    _one_error_line(result, "labels", "'a,b'")


def test_no_endpoint_and_an_unreachable_one_are_one_line(tmp_path: Path) -> None:
    query = tmp_path / "q.png"
    query.write_bytes(b"")
    workspace = tmp_path / "workspace"
    _one_error_line(_invoke("--workspace", workspace, "query", "--task", "t", "--query", query), str(workspace))
    url = f"http://127.0.0.1:{_closed_port()}"
    _one_error_line(_invoke("query", "--task", "t", "--query", query, "--url", url), f"cannot reach {url}")
    _one_error_line(_invoke("--workspace", workspace, "serve", "reload", "--url", url), f"cannot reach {url}")


def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTSEG_SERVE_PORT", "eighty")
    _one_error_line(_invoke("--workspace", tmp_path, "serve", "status"), "PROMPTSEG_", "port")


def test_crashes_keep_their_traceback_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = _invoke("synth", tmp_path / "a-file" / "out")  # not a user error this CLI knows: a crash
    assert result.exit_code == 1 and isinstance(result.exception, NotADirectoryError)


def test_help_creates_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROMPTSEG_WORKSPACE")
    for arguments in (
        [],
        ["--help"],
        ["ingest", "--help"],
        ["serve", "start", "--help"],
        ["champion"],
        ["nightly", "--help"],
    ):
        result = _invoke(*arguments)
        assert result.exit_code in (0, 2) and "Usage" in result.output, (arguments, result.output)
    entry_point = Path(sys.executable).with_name("promptseg")
    subprocess.run([entry_point, "train", "--help"], check=True, capture_output=True, cwd=tmp_path, env=os.environ)
    assert list(tmp_path.iterdir()) == []


def test_version_is_the_package_version() -> None:
    result = _invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"promptseg {version('promptseg-platform')}\n"


def test_choices_are_the_ones_the_code_accepts() -> None:
    assert [size.value for size in Size] == list(MODEL_SIZES)
    assert [profile.value for profile in Profile] == list(PROFILES)
    for mask_format in MaskFormat:
        assert SegmentRequest(mask_format=mask_format.value).mask_format == mask_format.value
    for volume_format in VolumeFormat:
        assert SegmentRequest(volume_format=volume_format.value).volume_format == volume_format.value
    result = _invoke("evaluate", "--profile", "thorough")
    assert result.exit_code == 2 and "quick" in result.output and "full" in result.output


def test_global_options_are_the_settings_a_flow_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`nightly` and `schedule` hand work to flows that read their settings from the environment (a deployment's run
    does too): what a command exports is what those read."""
    from pipelines import environment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri in earlier tests exports it

    result = _invoke("--workspace", tmp_path / "elsewhere", "--resolution", "96", "serve", "status")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["url"] is None
    in_flow = Settings()  # as pipelines.nightly.nightly and training_flow.train_flow build theirs
    assert in_flow.root == (tmp_path / "elsewhere").resolve() and in_flow.resolution == 96
    assert in_flow.registry.tracking_uri.endswith(str(tmp_path / "elsewhere" / "mlflow.db"))
    assert environment.in_force(in_flow) == {
        "PROMPTSEG_WORKSPACE": str((tmp_path / "elsewhere").resolve()),
        "PROMPTSEG_RESOLUTION": "96",
    }
