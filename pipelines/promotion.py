"""The promotion gate and hand moves of the `champion` alias.

`gate` compares the challenger and the champion (`quick` profile) on the same store snapshot, on the validation
split of the splits recorded on the challenger (never on test tasks; scores recorded on a version under that spec
and snapshot are reused, others are measured), and moves `champion` only when the challenger's Dice (the network's
mean at the largest N) is at least the champion's plus `margin`; with no champion it promotes. Versions trained
under other splits are not comparable and are refused. `pin` moves the alias by hand; `rollback` returns it to the
version it pointed at before the last move. Every move is recorded by the registry (who, when, why, both scores).
Each returns a `PromotionDecision`.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict

from pipelines.model_stages import held_out_evaluation, version_splits
from pipelines.settings import Settings
from promptseg.registry.versions import (
    CHALLENGER,
    CHAMPION,
    RecordedEvaluation,
    RegistryError,
    alias_history,
    alias_version,
    move_alias,
    tag_version,
)


class PromotionError(Exception):
    """The challenger and the champion cannot be compared (e.g. different held-out specs)."""


class PromotionDecision(BaseModel):
    """Where `champion` points after a gate run or a hand move, and why.

    A gate run also names the `challenger` and its `margin`; when it compared the two versions, their held-out Dice
    (the primary network's mean at the largest N), the store snapshot both were measured on and whether each
    score was `reused` from the version's tags (keys `challenger`, `champion`) rather than measured again."""

    model_config = ConfigDict(frozen=True)

    promoted: bool
    champion: str
    champion_before: str | None
    reason: str
    challenger: str | None = None
    margin: float | None = None
    challenger_dice: float | None = None
    champion_dice: float | None = None
    store_snapshot_id: str | None = None
    reused: dict[str, bool] | None = None


def _score(evaluation: RecordedEvaluation) -> float:
    """The primary network's held-out Dice at the largest N evaluated."""
    prefix = f"dice_{evaluation.primary}_n"
    n_max = max(int(key.removeprefix(prefix)) for key in evaluation.scores if key.startswith(prefix))
    return evaluation.scores[f"{prefix}{n_max}"]


def gate(settings: Settings, margin: float = 0.0) -> PromotionDecision:
    """Promote the challenger if it beats the champion by `margin`; returns the decision."""
    tracking, name = settings.registry.tracking_uri, settings.registry.model_name
    challenger = alias_version(tracking, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"model {name!r} has no {CHALLENGER} to promote")
    champion = alias_version(tracking, name, CHAMPION)
    decision = {"challenger": challenger, "champion_before": champion, "margin": margin}
    if champion == challenger:
        return PromotionDecision(
            **decision, promoted=False, champion=challenger, reason="the challenger is the champion"
        )
    if champion is None:
        move_alias(tracking, name, CHAMPION, challenger, reason="no champion yet: the challenger is promoted")
        return PromotionDecision(**decision, promoted=True, champion=challenger, reason="no champion yet")
    challenger_splits, champion_splits = version_splits(settings, challenger), version_splits(settings, champion)
    if challenger_splits != champion_splits:
        raise PromotionError(
            f"version {challenger} was trained under splits {challenger_splits.to_dict()} and version {champion} "
            f"under {champion_splits.to_dict()}: their validation scores are not comparable; pin by hand instead"
        )
    challenger_scores = held_out_evaluation(settings, challenger)
    champion_scores = held_out_evaluation(settings, champion)
    snapshot = challenger_scores.evaluation.store_snapshot_id
    if snapshot != champion_scores.evaluation.store_snapshot_id:
        raise PromotionError("the task store changed between the two evaluations; run the gate again")
    scores = {
        "challenger_dice": _score(challenger_scores.evaluation),
        "champion_dice": _score(champion_scores.evaluation),
    }
    promoted = scores["challenger_dice"] >= scores["champion_dice"] + margin
    relation = "≥" if promoted else "<"
    reason = (
        f"challenger v{challenger} Dice {scores['challenger_dice']:.4f} {relation} champion v{champion} "
        f"{scores['champion_dice']:.4f} + margin {margin} (store snapshot {snapshot})"
    )
    if promoted:
        move_alias(tracking, name, CHAMPION, challenger, reason=reason, scores=scores)
    tag_version(
        tracking, name, challenger, "promotion_decision", json.dumps({"promoted": promoted, "reason": reason, **scores})
    )
    return PromotionDecision(
        **decision,
        **scores,
        promoted=promoted,
        champion=challenger if promoted else champion,
        reason=reason,
        store_snapshot_id=snapshot,
        reused={"challenger": challenger_scores.reused, "champion": champion_scores.reused},
    )


def pin(settings: Settings, version: str, reason: str = "pinned by hand") -> PromotionDecision:
    """Point `champion` at `version` without evaluation (e.g. a rollback)."""
    record = move_alias(settings.registry.tracking_uri, settings.registry.model_name, CHAMPION, version, reason=reason)
    return PromotionDecision(
        promoted=True, champion=record["to_version"], champion_before=record["from_version"], reason=record["reason"]
    )


def rollback(settings: Settings) -> PromotionDecision:
    """Return `champion` to the version it pointed at before its last move."""
    history = alias_history(settings.registry.tracking_uri, settings.registry.model_name, CHAMPION)
    if not history or history[-1]["from_version"] is None:
        raise RegistryError(f"model {settings.registry.model_name!r} has no earlier champion to roll back to")
    return pin(settings, history[-1]["from_version"], reason=f"rollback from v{history[-1]['to_version']}")
