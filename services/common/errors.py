"""Errors shared by every service: retryable infrastructure trouble versus permanent problems."""

from __future__ import annotations


class ReelstreamError(Exception):
    """Base of our own errors."""


class RetryableError(ReelstreamError):
    """Infrastructure was unavailable; the same operation may succeed later."""


class BrokerUnavailable(RetryableError):
    """Kafka did not acknowledge in time."""


class DatabaseUnavailable(RetryableError):
    """Postgres could not be reached or timed out."""


class StorageUnavailable(RetryableError):
    """The S3 store could not be reached or refused the operation temporarily."""


class PermanentError(ReelstreamError):
    """Retrying will not help: invalid input, a job in the wrong state, a missing object."""
