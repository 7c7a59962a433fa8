-- The Prefect server's own database (flow runs, deployments, artifacts) in docker-compose.yml's PostgreSQL.
-- Mounted into /docker-entrypoint-initdb.d, so it runs once, when PostgreSQL initialises an empty volume. For a
-- volume created before the prefect service existed: docker compose exec postgres createdb -U churn prefect
CREATE DATABASE prefect;
