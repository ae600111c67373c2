"""The interfaces of traind: the command line (and, later, the REST API)."""
