"""Reading checkpoints for people: inspect summaries (torch-free) and generation/export (torch, imported lazily)."""
