"""The no-op job of every peer, as its worker processes import it (see compare.py).

Each peer reads where its server is from the environment that compare.py sets; nothing here is
tuned: every library is used the way its documentation's first example does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

PAYLOAD = "x" * 100


def noop(body: str = "") -> None:
    """RQ's job (and the shape of every other): do nothing."""


@asynccontextmanager
async def pgqueuer_factory() -> AsyncIterator[Any]:
    """pgqueuer's factory for `pgq run`: a PgQueuer on asyncpg or psycopg, one entrypoint."""
    from pgqueuer import PgQueuer
    from pgqueuer.models import Job

    dsn = os.environ["PEERS_DSN"]
    if os.environ.get("PEERS_PGQ_DRIVER") == "psycopg":
        import psycopg
        from pgqueuer import PsycopgDriver

        connection: Any = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        pgq = PgQueuer(PsycopgDriver(connection))
    else:
        import asyncpg  # type: ignore[import-untyped]
        from pgqueuer import AsyncpgDriver

        connection = await asyncpg.connect(dsn)
        pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("noop")
    async def run_noop(job: Job) -> None:
        pass

    try:
        yield pgq
    finally:
        await connection.close()


def celery_app() -> Any:
    """Celery on RabbitMQ with publisher confirms, its defaults otherwise."""
    from celery import Celery  # type: ignore[import-untyped]

    app = Celery("peers", broker=os.environ.get("PEERS_AMQP", "amqp://guest@127.0.0.1//"))
    app.conf.broker_transport_options = {"confirm_publish": True}
    app.conf.task_default_queue = os.environ.get("PEERS_QUEUE", "celery")

    @app.task(name="noop")  # type: ignore[untyped-decorator]
    def celery_noop(body: str = "") -> None:
        pass

    return app


def procrastinate_app() -> Any:
    """procrastinate on its psycopg connector, its defaults otherwise."""
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=os.environ.get("PEERS_DSN", "")))

    @app.task(name="noop")
    def procrastinate_noop(body: str = "") -> None:
        pass

    return app


if os.environ.get("PEERS_SYSTEM") == "celery":
    app = celery_app()
elif os.environ.get("PEERS_SYSTEM") == "procrastinate":
    app = procrastinate_app()
