"""What a model is: feature encoding, candidate estimators, compiled scoring and exact explanations."""
