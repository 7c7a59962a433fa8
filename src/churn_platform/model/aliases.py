"""The roles a registered model version can hold, as MLflow aliases: what serves, what is tested, what came before."""

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
