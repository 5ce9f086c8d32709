"""Alembic environment: runs migrations over the async engine built from the common settings."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from services.common.db import make_engine
from services.common.readmodel import Base
from services.common.settings import CommonSettings
from services.common.tenants import Tenant  # noqa: F401  (its tables, and the keys', are in Base.metadata)
from services.common.webhooks import WebhookDelivery  # noqa: F401  (the notifier's tables)

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = make_engine(CommonSettings())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=CommonSettings().database_url.get_secret_value(), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
