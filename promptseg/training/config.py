"""`TrainConfig`: everything a training run depends on (logged to MLflow as its params, and the artifact a resumed
run reads its configuration back from)."""

from __future__ import annotations

from dataclasses import dataclass, field

from promptseg.nets.factory import PRIOR_NAMES
from storage.splits import Splits


@dataclass
class TrainConfig:
    """Everything a training run depends on; logged to MLflow as params."""

    store_url: str
    resolution: int
    size: str = "tiny"
    n_max: int = 64
    bottleneck: bool = False
    priors: list[str] = field(default_factory=lambda: list(PRIOR_NAMES))  # PromptSeg's priors, any subset
    kl_weight: float = 0.01
    pretrained_encoder: str = ""
    init_weights: str = ""  # a checkpoint folder to start from (fine-tuning), e.g. the champion's
    placement_strategy: str = "PACK"  # Ray placement of the workers: PACK, or SPREAD over the nodes
    augment: dict = field(default_factory=dict)
    synthetic_fraction: float = 0.25
    hard_synthetic_share: float = 0.0  # of the synthetic batches, the share of tasks intensity cannot solve
    self_supervised_share: float = 0.0  # of the store episodes, the share of supervoxel pseudo-tasks
    max_prompts: int = 8
    batch_size: int = 4
    steps: int = 300
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    splits: dict[str, list[str]] = field(default_factory=lambda: Splits().to_dict())
    excluded: list[str] = field(default_factory=list)  # task patterns never trained on though no split holds them
    checkpoint_every: int = 25
    num_workers: int = 2
    use_gpu: bool = False
    threads_per_worker: int = 1
    max_failures: int = 2
    fail_after_checkpoint: int = 0
    tracking_uri: str = ""
    run_id: str = ""

    @property
    def held_out(self) -> list[str]:
        """The task patterns never trained on: the validation and the test split's, and the excluded ones (e.g. data
        whose licence does not allow a model that ships)."""
        return [*Splits.from_dict(self.splits).held_out, *self.excluded]

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_workers

    @property
    def scaled_lr(self) -> float:
        """Linear scaling: the learning rate grows with the number of workers, as the global batch does."""
        return self.lr * self.num_workers
