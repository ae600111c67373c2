"""The ledger's Alembic environment and revisions, shipped as a package so that
``service.ledger.migrate`` finds them wherever traind is installed (no ``alembic.ini``)."""
