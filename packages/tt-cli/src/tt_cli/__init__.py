"""tt_cli: the ``tt`` command line (run, ls, cp, cat, validate, download)."""
