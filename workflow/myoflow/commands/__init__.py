"""Subcommands of the ``myoflow`` command line, one module each.

A command module provides ``add_parser(subparsers)``, which adds its parser and sets
``run`` as the parser's default ``func``, and ``run(args) -> int``. ``myoflow.cli`` lists
the modules in ``COMMANDS``; adding a command is one new module and one line there.
"""
