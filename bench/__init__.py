"""reelstream's benchmarks as a package (`from bench import fleet_stats`, `python -m bench.fleet`).

Each module is also a script: `python bench/<name>.py` works as well, as the repository root is on the
path of the project's environment (`uv sync` installs it in editable mode).
"""
