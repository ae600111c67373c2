"""The service layer: settings (``config``), the ledger, the inbox, the worker process
and the daemon's main process (``daemon``), and checkpoints read for people."""
