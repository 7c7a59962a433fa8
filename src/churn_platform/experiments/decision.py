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
from churn_platform.experiments.records import LOCK_SQL, STOP_NAMED_SQL, experiment_summary
from churn_platform.model.aliases import CHAMPION, ModelReferences

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
    """Act on the analysis' winner (None: no winner, nothing to decide). An experiment already decided keeps its
    decision; a recommendation is recorded once per winner while the experiment runs."""
    if analysis.winner is None:
        return None
    earlier = decisions(url, analysis.name)
    if any(d.final for d in earlier):
        return next(d for d in reversed(earlier) if d.final)
    if not auto_promote and earlier and earlier[-1].winner == analysis.winner:
        return earlier[-1]  # recommended already: the person has it
    references = registry.references()
    reference = analysis.variant if analysis.winner == "variant" else analysis.control
    version = references.resolve(reference)
    champion = references.aliases.get(CHAMPION)
    served = experiment_summary(url, analysis.name)["arms"][analysis.winner]["model_versions"]
    action: Action = "recommended"
    why = f"{analysis.winner} ({reference}, version {version}) won experiment {analysis.name}: {analysis.reason}"
    if not auto_promote:
        why += (
            f"; automatic promotion is off: move `{CHAMPION}` to version {version} in the MLflow UI to promote it"
            if version != champion
            else "; it is the champion already: stop the experiment (`churn ab stop`)"
        )
    elif version is None or version not in served:
        why += (
            f"; not promoted automatically: `{reference}` now names version {version}, while the arm was served by"
            f" {', '.join(served) or 'no version'}: check in the MLflow UI"
        )
    elif version != champion:
        registry.promote(version, check=why)
        action = "promoted"
    else:
        action = "kept"
    tags = {DECISION_TAG: f"{action} by experiment {analysis.name}", DECIDED_BY_TAG: decided_by, REASON_TAG: why,
            EXPERIMENT_TAG: analysis.name}  # fmt: skip
    if version is not None:
        registry.tag(version, tags)
    row = {
        "name": analysis.name, "analysis_id": analysis.analysis_id, "winner": analysis.winner,
        "winner_version": version, "action": action, "champion_before": champion,
        "champion_after": version if action == "promoted" else champion, "decided_by": decided_by, "reason": why,
    }  # fmt: skip
    with db.connect(url) as conn, conn.transaction():
        conn.execute(LOCK_SQL)  # with starts and stops: the experiment stops with its decision recorded, or neither
        cur = conn.cursor(row_factory=class_row(Decision))
        final = [d for d in cur.execute(DECISIONS_SQL, {"name": analysis.name}).fetchall() if d.final]
        if final:
            return final[-1]  # another run decided meanwhile
        if action != "recommended":
            conn.execute(STOP_NAMED_SQL, {"name": analysis.name})  # no row when it was stopped already
        found = cur.execute(INSERT_SQL, row).fetchone()
    assert found is not None
    return found
