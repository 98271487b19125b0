"""The ``meshlet`` subcommands that have grown beyond a few lines, one module each (``cli.py`` stays a table of
contents): each module adds its parser with ``add_parser`` and runs it with ``run``."""
