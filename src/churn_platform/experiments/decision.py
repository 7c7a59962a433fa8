"""What a declared winner changes: promoted automatically, or recommended to a person, and either way recorded.

With automatic promotion on (CHURN_AB_AUTO_PROMOTE), a winning variant becomes the champion through the registry's
promotion (the `champion` alias moves, the champion it replaces becomes `previous`) and the experiment stops; a
winning control stops the experiment and the champion stays. With it off, nothing moves: the decision is a
recommendation that `churn ab report` shows, for a person to act on in the MLflow UI (moving `champion` there is
served within two poll intervals). Either way the winning version is tagged with what was decided, by whom and
why, and a row of `serving.experiment_decisions` keeps it in the experiment's history.

The registry is handed in (`Registry`): this package never reaches into training; the entrypoints pass the
registry's own promotion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from psycopg.rows import class_row

from churn_platform import db
from churn_platform.experiments.analysis import Analysis
from churn_platform.experiments.records import LOCK_SQL, STOP_NAMED_SQL
from churn_platform.model.aliases import CHAMPION, PREVIOUS, ModelReferences

Action = Literal["promoted", "kept", "recommended"]
COLUMNS = (
    "name, analysis_id, decided_at, winner, winner_version, action, champion_before, champion_after, decided_by, reason"
)
INSERT_SQL = f"""
INSERT INTO serving.experiment_decisions (
    name, analysis_id, winner, winner_version, action, champion_before, champion_after, decided_by, reason
) VALUES (
    %(name)s, %(analysis_id)s, %(winner)s, %(winner_version)s, %(action)s, %(champion_before)s, %(champion_after)s,
    %(decided_by)s, %(reason)s
) RETURNING {COLUMNS}
"""
RUNNING_SQL = "SELECT stopped_at IS NULL FROM serving.experiments WHERE name = %(name)s"
DECISIONS_SQL = f"SELECT {COLUMNS} FROM serving.experiment_decisions WHERE name = %(name)s ORDER BY decided_at, id"
# Tags on the winning version: the newest decision that named it (the decisions table keeps every one)
DECISION_TAG, DECIDED_BY_TAG, REASON_TAG, EXPERIMENT_TAG = "ab_decision", "ab_decided_by", "ab_reason", "ab_experiment"


class Registry(Protocol):
    """The registry operations a decision needs."""

    def references(self) -> ModelReferences:
        """The model's versions and aliases, read once."""
        ...

    def promote(self, version: str, check: str) -> None:
        """Make `version` the champion, the champion it replaces `previous`; `check` says why."""
        ...

    def tag(self, version: str, tags: Mapping[str, str]) -> None: ...

    def version_tags(self, version: str) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Decision:
    """One row of `serving.experiment_decisions`."""

    name: str
    analysis_id: int | None
    decided_at: datetime
    winner: str
    winner_version: str | None
    action: Action
    champion_before: str | None
    champion_after: str | None
    decided_by: str
    reason: str

    @property
    def final(self) -> bool:
        """The experiment was ended by it (a recommendation leaves it running)."""
        return self.action != "recommended"


def decisions(url: str, name: str) -> list[Decision]:
    """Every decision on the experiment, oldest first."""
    with db.connect(url, autocommit=True) as conn:
        return conn.cursor(row_factory=class_row(Decision)).execute(DECISIONS_SQL, {"name": name}).fetchall()


def decide(url: str, analysis: Analysis, registry: Registry, *, auto_promote: bool, decided_by: str) -> Decision | None:
    """Act on the analysis' winner (None: no winner, nothing to decide).

    One decision at a time per database, under the lock that starts and stops take: an experiment already decided
    keeps its decision, and a recommendation is recorded once per winning version. Only a running experiment is
    promoted or stopped; one a person stopped gets a recommendation. The winner is tagged before the registry moves,
    so a run whose record was lost after the promotion finds it again (and records it as the promotion it was).
    """
    if analysis.winner is None:
        return None
    name = analysis.name
    served = analysis.arms[analysis.winner].model_versions
    with db.connect(url) as conn, conn.transaction():
        conn.execute(LOCK_SQL)
        cur = conn.cursor(row_factory=class_row(Decision))
        earlier = cur.execute(DECISIONS_SQL, {"name": name}).fetchall()
        final = [d for d in earlier if d.final]
        if final:
            return final[-1]
        found = conn.execute(RUNNING_SQL, {"name": name}).fetchone()
        running = bool(found and found[0])
        references = registry.references()
        reference = analysis.variant if analysis.winner == "variant" else analysis.control
        version = references.resolve(reference)
        champion = references.aliases.get(CHAMPION)
        action, why = _action(analysis, reference, version, champion, served, auto_promote and running, running)
        if action == "kept" and version is not None and _promoted_by(registry, version, name):
            action, champion = "promoted", references.aliases.get(PREVIOUS)  # its record was lost: the same decision
        repeated = earlier and (earlier[-1].winner, earlier[-1].winner_version) == (analysis.winner, version)
        if action == "recommended" and repeated:
            return earlier[-1]  # recommended already: the person has it
        if version is not None:
            registry.tag(version, {DECISION_TAG: f"{action} by experiment {name}", DECIDED_BY_TAG: decided_by,
                                   REASON_TAG: why, EXPERIMENT_TAG: name})  # fmt: skip
        if action == "promoted" and champion != version:
            assert version is not None
            registry.promote(version, check=why)
        if action != "recommended":
            conn.execute(STOP_NAMED_SQL, {"name": name})
        row = {
            "name": name, "analysis_id": analysis.analysis_id, "winner": analysis.winner, "winner_version": version,
            "action": action, "champion_before": champion,
            "champion_after": version if action == "promoted" else champion, "decided_by": decided_by, "reason": why,
        }  # fmt: skip
        decided = cur.execute(INSERT_SQL, row).fetchone()
    assert decided is not None
    return decided


def _action(
    analysis: Analysis, reference: str, version: str | None, champion: str | None, served: list[str], act: bool,
    running: bool,
) -> tuple[Action, str]:  # fmt: skip
    """What the winner changes, and why: a winner that cannot be named as the version that served its arm is
    only recommended; without `act` (automatic promotion off, or the experiment stopped) everything is."""
    why = f"{analysis.winner} ({reference}, version {version}) won experiment {analysis.name}: {analysis.reason}"
    if version is None or version not in served:
        named = "no version" if version is None else f"version {version}"
        return "recommended", (
            f"{why}; nothing moves: `{reference}` now names {named}, while the arm was served by"
            f" {', '.join(served) or 'no version'}: check in the MLflow UI"
        )
    if not act:
        if version == champion:
            return "recommended", f"{why}; it is the champion already: stop the experiment (`churn ab stop`)"
        off = "automatic promotion is off" if running else "the experiment was stopped"
        return "recommended", f"{why}; {off}: move `{CHAMPION}` to version {version} in the MLflow UI to promote it"
    return ("kept", why) if version == champion else ("promoted", why)


def _promoted_by(registry: Registry, version: str, name: str) -> bool:
    return registry.version_tags(version).get(DECISION_TAG) == f"promoted by experiment {name}"
