"""Every command, option and argument of `relay` says what it is for in --help."""

from __future__ import annotations

import click

from relay.cli.main import COMMANDS, cli


def _walk(command: click.Command, path: str):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name}"
            yield from _walk(sub, f"{path} {name}")


def test_every_option_and_argument_has_help() -> None:
    missing = []
    seen = 0
    for path, command in _walk(cli, "relay"):
        seen += 1
        if not (command.help or command.short_help):
            missing.append(f"{path}: the command has no help")
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[0]}: no help")
            if isinstance(param, click.Argument):
                # click arguments take no help=: the command's help must name them
                name = (param.metavar or param.name or "").upper()
                text = (command.help or "").upper()
                if name not in text:
                    missing.append(f"{path} {name}: the argument is not explained")
    assert seen > len(COMMANDS)
    assert not missing, "\n".join(missing)
