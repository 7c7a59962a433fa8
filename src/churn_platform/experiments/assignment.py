"""A/B assignment: a user's arm is a pure function of the experiment, its salt and the user id.

No state and no randomness at request time: the same user gets the same arm on every request, in every worker
process and after every restart (Python's salted `hash()` is never used). The bucket is the first 8 bytes of
sha256(salt NUL experiment NUL user_id), read big-endian and kept to its top 53 bits as a fraction of 2**53,
so SQL can recompute it for an analysis. Because the
variant is "bucket < share", raising an experiment's share only ever moves users from control to variant.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

Arm = Literal["control", "variant"]

_SEPARATOR = b"\x00"  # cannot occur in PostgreSQL text, so ("ab", "c") and ("a", "bc") never hash alike
_MANTISSA_BITS = 53  # a double holds 53 bits exactly: dividing all 64 would round the largest values up to 1.0


def bucket(experiment: str, salt: str, user_id: str) -> float:
    """The user's uniform position in [0, 1) for this experiment and salt."""
    message = _SEPARATOR.join(part.encode("utf-8") for part in (salt, experiment, user_id))
    first_64_bits = int.from_bytes(hashlib.sha256(message).digest()[:8], "big", signed=False)
    return (first_64_bits >> (64 - _MANTISSA_BITS)) / (1 << _MANTISSA_BITS)


def assign_arm(experiment: str, salt: str, user_id: str, variant_share: float) -> Arm:
    """`variant` for the users whose bucket falls below `variant_share`, `control` for the others."""
    if math.isnan(variant_share) or not 0.0 <= variant_share <= 1.0:
        raise ValueError(f"variant_share must be between 0 and 1, got {variant_share!r}")
    return "variant" if bucket(experiment, salt, user_id) < variant_share else "control"
