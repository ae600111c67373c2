"""The training worker process: claims queued files, trains them, and serves the operator's requests."""
