"""Every --help text stands on its own: no pointers into design documents a user of the command does not have."""

import argparse
import re

import pytest

from depthg.bench import __main__ as bench
from depthg.cli.main import build_parser

INTERNAL = re.compile(r"§|METHOD\.md|DESIGN\.md|\(#\d+\)")


def _parsers(parser: argparse.ArgumentParser, path=("python -m depthg",)):
    """(command path, parser) for the parser and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_depthg_help_texts_cite_no_internal_sections():
    seen = 0
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()
        assert not INTERNAL.search(text), f"`{' '.join(path)} --help` cites {INTERNAL.search(text).group()}:\n{text}"
        seen += 1
    assert seen >= 10  # depthg, prep and its stages, train, eval, reproduce, presets


def test_bench_help_texts_cite_no_internal_sections(capsys):
    for args in (["--help"], *([name, "--help"] for name in bench.COMMANDS)):
        with pytest.raises(SystemExit):
            bench.main(args)
        text = capsys.readouterr().out
        assert text and not INTERNAL.search(text), f"`python -m depthg.bench {' '.join(args)}`:\n{text}"
