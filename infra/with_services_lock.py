"""Run a command while holding `.run/services.lock`, the lock every user of the running services takes.

    python infra/with_services_lock.py bash infra/services.sh start

Python opens the lock file close-on-exec, so processes the command starts do not inherit the lock
(the shell's `flock` would pass it on to every service it starts).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / ".run" / "services.lock"


def main() -> int:
    LOCK.parent.mkdir(exist_ok=True)
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(sys.argv[1:], check=False).returncode  # noqa: S603 - the caller's own command


if __name__ == "__main__":
    sys.exit(main())
