"""Which model answers a user: the champion, or the model of the user's arm in the running experiment.

Routing reads only what a request took at its start (the loaded models, the experiment), so a swap or a poll in the
middle of a request never mixes two states. A user's arm is a pure function of the experiment and the user id
(`Experiment.arm_for`); an arm whose model is not loaded falls back to the champion, and says so. With shadow
scoring on, a user inside an experiment is also scored by the other arm's model (the route's `shadow`), so the two
models can be compared on the same users; only the route's own model answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from churn_platform.experiments.records import Experiment
from churn_platform.model.aliases import CHAMPION
from churn_platform.serving.models import LoadedModel

NO_EXPERIMENT_ARM = "champion"  # the arm of every request while no experiment runs
FALLBACK_ARM = "fallback"  # assigned to the variant, but the variant's model is not loaded: the champion answered
T = TypeVar("T")


class ServiceUnavailableError(RuntimeError):
    """No champion is loaded yet (nothing registered, or every version refused)."""


@dataclass(frozen=True)
class Route:
    """Which model answers a user, and why."""

    reference: str  # the alias (or version number) in the model set
    model: LoadedModel
    experiment: str | None
    arm: str
    shadow: LoadedModel | None = None  # the other arm's model, which scores the same features for the log


class Router:
    """Routes users of one registered model to its loaded versions."""

    def __init__(self, model_name: str, *, shadow_scoring: bool = False) -> None:
        self.model_name = model_name
        self.shadow_scoring = shadow_scoring

    def champion(self, models: Mapping[str, LoadedModel]) -> LoadedModel:
        """The champion, or ServiceUnavailableError while none is loaded."""
        champion = models.get(CHAMPION)
        if champion is None:
            raise ServiceUnavailableError(
                f"no {CHAMPION} version of model {self.model_name!r} is loaded yet: train one (`churn train`)"
                " or wait for the registry"
            )
        return champion

    def route(self, user_id: str, models: Mapping[str, LoadedModel], experiment: Experiment | None) -> Route:
        """One user's route."""
        if experiment is None:
            return Route(CHAMPION, self.champion(models), None, NO_EXPERIMENT_ARM)
        return self._arm_route(experiment.arm_for(user_id), models, experiment)

    def routes(
        self, user_ids: Sequence[str], models: Mapping[str, LoadedModel], experiment: Experiment | None
    ) -> list[Route]:
        """Each user's route, in order; users routed alike share one Route object (see `per_route`)."""
        if experiment is None:  # everyone gets the champion: one route for all
            return [Route(CHAMPION, self.champion(models), None, NO_EXPERIMENT_ARM)] * len(user_ids)
        arms = [experiment.arm_for(user_id) for user_id in user_ids]
        by_arm = {arm: self._arm_route(arm, models, experiment) for arm in set(arms)}
        return [by_arm[arm] for arm in arms]

    def _arm_route(self, arm: str, models: Mapping[str, LoadedModel], experiment: Experiment) -> Route:
        champion = self.champion(models)
        reference = experiment.variant if arm == "variant" else experiment.control
        model = models.get(reference)
        if model is None:
            return Route(CHAMPION, champion, experiment.name, FALLBACK_ARM)
        shadow = None
        if self.shadow_scoring:  # no shadow when the other arm's model is not loaded
            shadow = models.get(experiment.control if arm == "variant" else experiment.variant)
        return Route(reference, model, experiment.name, arm, shadow)


def per_route(routes: Sequence[Route], fields: Callable[[Route], T]) -> list[T]:
    """`fields(route)` for each row, computed once per distinct Route (rows routed alike share one object)."""
    distinct = {id(route): route for route in routes}
    computed = {key: fields(route) for key, route in distinct.items()}
    return [computed[id(route)] for route in routes]
