"""The closed-loop scenario: a synthetic world's users calling the prediction service day by day, and the story of
what the platform did about it (drift, retraining, experiments, promotions)."""
