"""A/B assignment: sticky, the same in every process, and splitting users in the asked proportion."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn_platform.experiments.assignment import assign_arm, bucket

# Text PostgreSQL can hold (no NUL), as experiment names, salts and user ids are.
names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
shares = st.floats(min_value=0.0, max_value=1.0)
USERS = [f"user-{i}" for i in range(100_000)]


def _reference_bucket(experiment: str, salt: str, user_id: str) -> float:
    """The documented layout by hand: sha256(salt NUL experiment NUL user), first 8 bytes big-endian, top 53 bits."""
    digest = hashlib.sha256(salt.encode() + b"\0" + experiment.encode() + b"\0" + user_id.encode()).digest()
    return int(digest[:8].hex(), 16) // 2**11 / 2**53


def test_known_users_keep_their_recorded_buckets() -> None:
    # Recorded once: a change here would move live users between arms in the middle of an experiment.
    assert bucket("checkout-v2", "s3cr3t", "user-1") == 0.9356422269722862
    assert bucket("checkout-v2", "s3cr3t", "user-2") == 0.9764510557303725
    assert bucket("exp", "", "") == 0.04081840858183472
    assert assign_arm("checkout-v2", "s3cr3t", "user-1", 0.5) == "control"
    assert assign_arm("exp", "", "", 0.5) == "variant"


@given(names, names, names)
def test_bucket_follows_the_documented_hash(experiment: str, salt: str, user_id: str) -> None:
    assert bucket(experiment, salt, user_id) == _reference_bucket(experiment, salt, user_id)


@given(names, names, names, shares)
def test_assignment_is_stable_and_within_the_unit_interval(experiment: str, salt: str, user: str, share: float) -> None:
    u = bucket(experiment, salt, user)

    assert 0.0 <= u < 1.0
    arms = {assign_arm(experiment, salt, user, share) for _ in range(3)}
    assert arms == {"variant" if u < share else "control"}


@given(names, names, names, shares, shares)
def test_raising_the_share_only_moves_users_into_the_variant(
    experiment: str, salt: str, user: str, share: float, other: float
) -> None:
    low, high = sorted((share, other))
    if assign_arm(experiment, salt, user, low) == "variant":
        assert assign_arm(experiment, salt, user, high) == "variant"


def test_a_share_of_zero_or_one_sends_everyone_to_one_arm() -> None:
    assert {assign_arm("e", "s", user, 0.0) for user in USERS[:2_000]} == {"control"}
    assert {assign_arm("e", "s", user, 1.0) for user in USERS[:2_000]} == {"variant"}


@pytest.mark.parametrize("share", [float("nan"), -0.1, 1.5])
def test_a_share_outside_the_unit_interval_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="variant_share"):
        assign_arm("e", "s", "u", share)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5])
def test_the_observed_share_is_within_one_point_of_the_asked_share(share: float) -> None:
    in_variant = sum(assign_arm("checkout-v2", "fixed-salt", user, share) == "variant" for user in USERS)

    assert abs(in_variant / len(USERS) - share) < 0.01


def test_another_process_with_any_hash_seed_assigns_the_same_arms() -> None:
    users = USERS[:500]
    script = (
        "import json, sys\n"
        "from churn_platform.experiments.assignment import bucket\n"
        "users = json.load(sys.stdin)\n"
        "print(json.dumps([bucket('checkout-v2', 'fixed-salt', u) for u in users]))\n"
    )
    expected = [bucket("checkout-v2", "fixed-salt", user) for user in users]
    for seed in ("0", "1", "4242"):
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(users), capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )  # fmt: skip
        assert json.loads(result.stdout) == expected, f"PYTHONHASHSEED={seed}"


@settings(max_examples=20, deadline=None)
@given(st.tuples(names, names).filter(lambda pair: pair[0] != pair[1]))
def test_another_salt_reshuffles_users_independently(salts: tuple[str, str]) -> None:
    users = USERS[:4_000]
    first = [assign_arm("checkout-v2", salts[0], user, 0.5) for user in users]
    second = [assign_arm("checkout-v2", salts[1], user, 0.5) for user in users]

    # Independent 50/50 splits agree on half the users; 4,000 users put 0.5 ± 0.05 beyond six standard errors.
    agreement = sum(a == b for a, b in zip(first, second, strict=True)) / len(users)
    assert abs(agreement - 0.5) < 0.05


@settings(max_examples=20, deadline=None)
@given(st.tuples(names, names).filter(lambda pair: pair[0] != pair[1]))
def test_another_experiment_reshuffles_users_independently(experiments: tuple[str, str]) -> None:
    users = USERS[:4_000]
    first = [assign_arm(experiments[0], "fixed-salt", user, 0.3) for user in users]
    second = [assign_arm(experiments[1], "fixed-salt", user, 0.3) for user in users]

    # Independent 30/70 splits put 0.3 * 0.3 = 9% of users in both variants; the standard error is under 0.5%.
    both = sum(a == b == "variant" for a, b in zip(first, second, strict=True)) / len(users)
    assert abs(both - 0.09) < 0.03


def test_the_separator_keeps_fields_apart() -> None:
    assert bucket("ab", "salt", "c") != bucket("a", "salt", "bc")
    assert bucket("exp", "ab", "c") != bucket("exp", "a", "bc")
