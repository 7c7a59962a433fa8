"""SQLAlchemy URLs for the MLflow backend store, from the platform's libpq URLs (TCP or unix socket)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from churn_platform.db import socket_url, sqlalchemy_url


def test_a_socket_url_keeps_its_folder_as_the_host_parameter() -> None:
    # Given the embedded PostgreSQL's URL: no TCP host, a socket folder (with a space, to be escaped)
    url = socket_url(Path("/tmp/churn data/postgres"), "churn")

    # When turned into a SQLAlchemy URL for another database on that server
    parsed = make_url(sqlalchemy_url(url, "mlflow"))

    # Then it names the driver, the user and the new database, and keeps the socket folder as `?host=`
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.username, parsed.host, parsed.database) == ("postgres", None, "mlflow")
    assert parsed.query == {"host": "/tmp/churn data/postgres"}


def test_a_tcp_url_keeps_credentials_port_and_options() -> None:
    url = "postgresql://churn:p%40ss%3Aword@db.internal:6543/churn?sslmode=require"
    parsed = make_url(sqlalchemy_url(url, "mlflow"))
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == ("churn", "p@ss:word", "db.internal", 6543)
    assert parsed.database == "mlflow"
    assert parsed.query == {"sslmode": "require"}
