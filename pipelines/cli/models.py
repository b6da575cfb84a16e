"""The model commands: `train`, `evaluate`, `register`, `promote` (the gate) and `champion history|pin|rollback`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines import stages
from pipelines.cli.choices import Profile, Size
from pipelines.cli.context import note, settings, show
from pipelines.settings import Settings

champion = typer.Typer(
    help="Where the `champion` alias points: its history, a pin by hand, a rollback.", no_args_is_help=True
)


def where_to_look(settings_in_force: Settings) -> None:
    """The MLflow UI and the Ray dashboard, as lines on stderr."""
    for name, address in stages.addresses(settings_in_force).items():
        if address:
            note(f"{name.replace('_', ' ')}: {address}", style="cyan")


def train(
    ctx: typer.Context,
    steps: int = 400,
    size: Annotated[Size, typer.Option(help="PromptSeg size, or universeg for the baseline.")] = Size.tiny,
    workers: Annotated[int, typer.Option(help="Ray Train workers (DDP); batch and learning rate scale with it.")] = 2,
    gpu: Annotated[bool, typer.Option(help="One GPU per worker (NCCL, bf16 autocast).")] = False,
    batch_size: Annotated[int, typer.Option(help="Episodes per worker per step.")] = 4,
    seed: int = 0,
    run_name: str | None = None,
    resume: Annotated[bool, typer.Option(help="Continue the run named --run-name from its last checkpoint.")] = False,
    checkpoint_every: int = 50,
    max_failures: Annotated[int, typer.Option(help="Worker failures survived by restarting from a checkpoint.")] = 2,
    register: bool = True,
    quick_evaluation: Annotated[
        bool,
        typer.Option(
            "--evaluate/--no-evaluate", help="Run the quick held-out evaluation after training (else `evaluate` later)."
        ),
    ] = True,
    report_test: Annotated[
        bool, typer.Option(help="Also evaluate the test split for the model card (reporting only, never decides).")
    ] = True,
    bottleneck: Annotated[bool, typer.Option(help="Variational information bottleneck on the prompt tokens.")] = False,
    priors: Annotated[
        str, typer.Option(help="PromptSeg's priors: a comma list of prototypes, intensity, location, or none.")
    ] = "prototypes,intensity,location",
    pretrained_encoder: Annotated[
        Path | None, typer.Option(exists=True, help="Local SAM / SAM-Med2D ViT weights for the image encoder.")
    ] = None,
    synthetic_fraction: Annotated[float, typer.Option(help="Share of batches made of synthetic tasks.")] = 0.25,
    hard_synthetic_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Of the synthetic batches, the share of tasks intensity cannot solve."),
    ] = 0.0,
    self_supervised_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Of the store episodes, the share of supervoxel pseudo-tasks from training volumes."
        ),
    ] = 0.0,
    augment: Annotated[bool, typer.Option(help="Task augmentation of every episode (see task_augment.py).")] = True,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            help="A task pattern (dataset:NAME, center:, task:, label:) never trained on though no split holds it, "
            "e.g. data whose licence does not allow a model that ships; repeatable."
        ),
    ] = None,
) -> None:
    """Train an in-context network with Ray Train (progress from rank 0 on stderr), run the quick evaluation on the
    validation split and, for the model card, on the test split (unless --no-evaluate) and register the result as the
    `challenger` version."""
    if resume and not run_name:
        raise typer.BadParameter("--resume continues the run named by --run-name", param_hint="--resume")
    from promptseg.nets.model import PRIOR_NAMES, check_priors

    names = [] if priors.strip().lower() == "none" else [name.strip() for name in priors.split(",") if name.strip()]
    try:
        names = list(check_priors(names))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--priors") from None
    if size == Size.universeg and tuple(names) != PRIOR_NAMES:
        raise typer.BadParameter("priors are a PromptSeg option; UniverSeg has none", param_hint="--priors")
    options = (
        {}
        if resume
        else {
            "steps": steps,
            "size": size.value,
            "num_workers": workers,
            "use_gpu": gpu,
            "batch_size": batch_size,
            "seed": seed,
            "checkpoint_every": checkpoint_every,
            "max_failures": max_failures,
            "bottleneck": bottleneck,
            "priors": names,
            "pretrained_encoder": str(pretrained_encoder.resolve()) if pretrained_encoder else "",
            "synthetic_fraction": synthetic_fraction,
            "hard_synthetic_share": hard_synthetic_share,
            "self_supervised_share": self_supervised_share,
            "augment": {} if augment else {"enabled": False},
            "excluded": list(exclude or []),
        }
    )
    settings_in_force = settings(ctx)
    trained = stages.train(
        settings_in_force,
        run_name=run_name,
        resume=resume,
        register=register,
        evaluate=quick_evaluation,
        report_test=report_test,
        **options,
    )
    show(trained)
    where_to_look(settings_in_force)


def evaluate(
    ctx: typer.Context,
    model: str = "challenger",
    profile: Annotated[Profile, typer.Option(help="quick (N 1/4/8, 1 resample) or full (N to 32, baselines).")] = (
        Profile.quick
    ),
    split: Annotated[
        str, typer.Option(help="validation (design choices, the gate) or test (reporting only).")
    ] = "validation",
    resamples: Annotated[int | None, typer.Option(help="Override the profile's prompt resamples.")] = None,
    queries: Annotated[int | None, typer.Option(help="Override the queries per resample.")] = None,
    n_prompts: Annotated[list[int] | None, typer.Option(help="Override the prompt counts; repeatable.")] = None,
    baseline: Annotated[
        list[Path] | None, typer.Option(exists=True, help="Checkpoint folder of another in-context network (repeat).")
    ] = None,
    supervised_steps: Annotated[int | None, typer.Option(help="Supervised UNet steps (0: skip).")] = None,
    min_gap: Annotated[
        int | None, typer.Option(help="Slices between prompts and queries in a single-case dataset.")
    ] = None,
    universeg_steps: Annotated[
        int | None,
        typer.Option(help="Training steps of the full profile's UniverSeg (default: the evaluated version's own)."),
    ] = None,
) -> None:
    """Evaluate a registered version (alias or number) on one split's tasks beside the baselines and controls."""
    if split not in ("validation", "test"):
        raise typer.BadParameter("choose validation or test", param_hint="--split")
    show(
        stages.evaluate(
            settings(ctx),
            model,
            profile=profile.value,
            split=split,
            baselines=baseline,
            universeg_steps=universeg_steps,
            resamples=resamples,
            queries=queries,
            n_prompts=n_prompts or None,
            supervised_steps=supervised_steps,
            min_gap=min_gap,
        )
    )


def register(ctx: typer.Context, run_id: str, checkpoint: Annotated[Path, typer.Argument(exists=True)]) -> None:
    """Register a training run's checkpoint folder as a new version (alias `challenger`)."""
    show({"version": stages.register(settings(ctx), run_id, checkpoint)})


def promote(
    ctx: typer.Context,
    margin: Annotated[float, typer.Option(help="Dice the challenger must gain over the champion.")] = 0.0,
) -> None:
    """Promote the challenger if it beats the champion on the same held-out evaluation (the gate); to move the alias
    by hand, see `promptseg champion`."""
    show(stages.promote(settings(ctx), margin=margin))


@champion.command()
def history(ctx: typer.Context) -> None:
    """List every move of `champion`: from, to, who, when, why and the scores."""
    from promptseg.registry.versions import CHAMPION, alias_history

    registry = settings(ctx).registry
    show(alias_history(registry.tracking_uri, registry.model_name, CHAMPION))


@champion.command()
def pin(ctx: typer.Context, version: str) -> None:
    """Point `champion` at VERSION by hand, without evaluation."""
    show(stages.promote(settings(ctx), version=version))


@champion.command()
def rollback(ctx: typer.Context) -> None:
    """Return `champion` to the version it pointed at before its last move."""
    from pipelines import promotion

    show(promotion.rollback(settings(ctx)))
