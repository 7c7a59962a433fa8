"""The roles a registered model version can hold, as MLflow aliases: what serves, what is tested, what came before.

A reference to a version is a version number, which stands for itself, or an alias; `ModelReferences` resolves one
against what the registry holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


def is_version_number(reference: str) -> bool:
    """A reference of digits names a version; anything else names an alias."""
    return reference.isdigit()


@dataclass(frozen=True)
class ModelReferences:
    """What a registered model holds, as read from the registry once: its versions and its alias map."""

    model_name: str
    versions: frozenset[str]
    aliases: Mapping[str, str]  # alias -> version

    def resolve(self, reference: str) -> str | None:
        """The version `reference` names, or None when the model has no such version or alias."""
        if is_version_number(reference):
            return reference if reference in self.versions else None
        return self.aliases.get(reference)
