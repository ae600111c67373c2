"""The training engine: model, data, checkpoints and the training loop (torch only)."""
