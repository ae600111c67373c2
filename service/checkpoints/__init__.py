"""Checkpoints read for people: ``catalog`` (``traind inspect``, torch-free) and
``inference`` (``traind generate`` and ``traind export``; torch, imported lazily)."""
