"""Settings of traind: the ``traind.toml`` sections, their environment overrides and the commented template."""
