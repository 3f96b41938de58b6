"""The ``degen`` command line: one thin module per command."""
