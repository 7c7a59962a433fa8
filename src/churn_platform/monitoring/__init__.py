"""Watching the live model: alerts now; drift, realised performance and data quality next."""
