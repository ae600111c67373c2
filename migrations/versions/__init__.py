"""Ledger revisions, oldest first: ``NNNN_name.py`` with revision id ``NNNN_name``."""
