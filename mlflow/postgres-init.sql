-- The MLflow server's own database (runs, metrics, model registry) in docker-compose.yml's PostgreSQL.
-- Mounted into /docker-entrypoint-initdb.d, so it runs once, when PostgreSQL initialises an empty volume. For a
-- volume created before the mlflow service existed: docker compose exec postgres createdb -U churn mlflow
CREATE DATABASE mlflow;
