"""What the model stages (pipelines.model_stages) hand on, where one result joins several packages' records.

- `TrainingOutcome` (`train`, the `train` flow): the training run (promptseg.training.loop.TrainingResult:
  run id and name, final checkpoint folder, final loss), its `quick` held-out `Evaluation` (None when not evaluated)
  and the registered version (None when not registered).
- `VersionEvaluation` (`evaluate`): a registered version's `Evaluation`, the version resolved from an alias
  or number.
- `VersionScores` (`held_out_evaluation`, read by the promotion gate): the evaluation a version's scores come
  from as the registry records it, and whether it was reused from the version's tags rather than measured again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from promptseg.evaluation.report import Evaluation
from promptseg.registry.versions import RecordedEvaluation
from promptseg.training.loop import TrainingResult


class TrainingOutcome(TrainingResult):
    evaluation: Evaluation | None = None
    test_evaluation: Evaluation | None = None
    version: str | None = None


class VersionEvaluation(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    evaluation: Evaluation


class VersionScores(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    evaluation: RecordedEvaluation
    reused: bool
