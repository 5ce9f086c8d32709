"""The GPU worker: runs one job at a time on its slot and reports events."""
