"""The service layer: settings, ledger, inbox watcher, worker loop and supervisor."""
