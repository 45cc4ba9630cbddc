"""The ``medsegunet`` command's subcommands: each module registers its parser (``addParser``) and runs
it, with the console's wording; the library packages below neither parse arguments nor print.
"""
