"""The command line, ``python -m depthg <command>``: ``main`` parses and dispatches, ``prep`` holds the preparation
stages' subcommands. An edge of the package: nothing in the library imports it."""
