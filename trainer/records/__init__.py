"""What several processes read, torch-free: checkpoint layout and manifests, ``training_state.json``, the event log, drop formats."""
