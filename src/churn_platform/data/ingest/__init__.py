"""A user's own files: the data contract, validation, and transactional, idempotent loads into `raw.*`."""
