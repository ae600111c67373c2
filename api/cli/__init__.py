"""The ``traind`` command line: local commands, REST clients of a running daemon, and their views."""
