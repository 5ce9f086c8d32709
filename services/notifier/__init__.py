"""The webhook notifier: Standard Webhooks for job events, from a Postgres outbox."""
