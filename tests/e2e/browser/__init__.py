"""Browser tests of the web UI. A package, so that pytest imports this folder's conftest as
``browser.conftest``: tests/e2e's test modules import their helpers from the module named
``conftest``, which a second conftest outside a package would replace."""
