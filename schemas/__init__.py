"""reelstream contracts: topics, the job request, the model catalog and the versioned events.

This package imports nothing of ours; every service depends on it, never the other way.
"""
