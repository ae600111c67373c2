"""What several processes read and write, torch-free: the one home of the shared formats.

The trainer writes these files; the service, ``traind inspect`` and the API read them with
the same code (an import-linter contract keeps this package free of torch and of the rest
of ``trainer``, and the API imports nothing else of ``trainer``):

- ``checkpoints``: the names of the checkpoint folders and files, and readers of their
  small JSON files;
- ``manifest``: ``manifest.json``, written last, which makes a folder complete;
- ``staging``: folders that appear complete under their name, or not at all;
- ``state``: ``training_state.json`` (``summary`` shows it to people, any version);
- ``traces``: what proves a checkpoints folder already holds a lineage;
- ``events``: the event log ``events.jsonl``, its writer and its readers;
- ``formats`` and ``examples``: drop files, and the formats of their lines;
- ``lifecycle``: where a drop is in its life, as the ledger records it;
- ``storage``: durable writes, content hashes, and a full disk named as such.
"""
