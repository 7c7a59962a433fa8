"""The kinds of synthetic world, behind one interface: start, continue and restore a world, and its churn definition.

`world` stores and loads every kind through the same code; only the simulator and its state differ by kind.
"""

from __future__ import annotations

from typing import Any

from churn_platform.data import labels
from churn_platform.data.synthetic import purchase_simulator, simulator
from churn_platform.data.synthetic.purchase_model import PurchaseState
from churn_platform.data.synthetic.world_model import SimulatedDays, SimulatedState, WorldConfig, WorldState


def new_world(config: WorldConfig) -> SimulatedState:
    """The initial state of a world of `config.kind`."""
    if config.kind == "purchases":
        return purchase_simulator.new_world(config)
    return simulator.new_world(config)


def simulate(config: WorldConfig, state: SimulatedState, days: int, *, with_oracle: bool = True) -> SimulatedDays:
    """Simulate `days` more days of a world from `state` (mutated in place)."""
    if isinstance(state, PurchaseState):
        return purchase_simulator.simulate(config, state, days, with_oracle=with_oracle)
    if isinstance(state, WorldState):
        return simulator.simulate(config, state, days, with_oracle=with_oracle)
    raise TypeError(f"no simulator for {type(state).__name__}")


def state_from_bytes(config: WorldConfig, blob: bytes, scalars: dict[str, Any]) -> SimulatedState:
    """A stored world's state, restored as its kind's state."""
    state_type: type[SimulatedState] = PurchaseState if config.kind == "purchases" else WorldState
    return state_type.from_bytes(blob, scalars)


def churn_definition(config: WorldConfig) -> labels.ChurnDefinition:
    """What churn means in a world: a subscription's `cancel` event, or no purchase within the horizon."""
    if config.kind == "purchases":
        return labels.ChurnDefinition("non_contractual", end_event_types=(), activity_event_types=("purchase",))
    return labels.ChurnDefinition("contractual", end_event_types=("cancel",))
