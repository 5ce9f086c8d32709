"""A cap on the long-lived responses of one api process: SSE streams and streamed downloads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from services.api.errors import TooManyStreams


class StreamLimit:
    """Counts the streams whose body is being sent; a request over the cap gets a 503 with Retry-After.

    A stream counts from its body's first chunk to its end (`held` inside the body's generator), so one
    whose client left before the body started never takes a place it could leak; the check comes
    before, so a burst of new streams may pass the cap by the requests still in flight.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0

    def check(self, what: str) -> None:
        if self.open >= self.cap:
            raise TooManyStreams(
                f"{self.open} streams are open on this api process (at most {self.cap}); retry {what}"
                " after Retry-After seconds, or on another replica"
            )

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
