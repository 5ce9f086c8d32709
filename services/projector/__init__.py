"""The projector: folds `jobs.requested` and `jobs.events` into the Postgres read model, and rebuilds it."""
