"""The main process of ``traind serve``: supervisor, systemd readiness and notify, status, one instance per folders."""
