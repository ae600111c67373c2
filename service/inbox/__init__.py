"""The inbox: which files are drops, noticing them, checking them, and taking stock of the folders at start."""
