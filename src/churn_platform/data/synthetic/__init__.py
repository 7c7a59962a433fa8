"""The simulated worlds: a seeded simulator of a subscription product, its oracle, and its tables."""
