"""One log format for every service: single-line key=value records on stderr."""

from __future__ import annotations

import logging
import sys


def configure(service: str, level: str = "INFO") -> logging.Logger:
    """Set up root logging once per process and return the service's logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "botocore", "aiobotocore", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # diffusers warns on every prompt longer than the text encoder keeps; the job still runs.
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return logging.getLogger(f"reelstream.{service}")
