"""``zoo completion bash|zsh``: print the shell code that completes ``zoo`` commands (argcomplete).

The snippet makes the shell call ``zoo`` itself with argcomplete's environment
variables set; :func:`zoo.cli.main` answers those calls before parsing anything.
"""

from __future__ import annotations

import argparse

from zoo.host.registry import Registry

SHELLS = ("bash", "zsh", "fish")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "completion", help="print the shell code that completes zoo commands and options",
        description="Print the code that makes SHELL complete zoo's commands, options and "
                    "choices. Load it once per session, or add the line to your shell's "
                    "startup file.",
        epilog="examples:\n"
               '  eval "$(zoo completion bash)"      # in ~/.bashrc\n'
               '  eval "$(zoo completion zsh)"       # in ~/.zshrc\n'
               "  zoo completion fish | source       # in ~/.config/fish/config.fish")
    p.add_argument("shell", choices=SHELLS, metavar="SHELL",
                   help=f"the shell: {', '.join(SHELLS)}")
    p.set_defaults(handler=completion_command, report_plugins=False)


def completion_command(args: argparse.Namespace, registry: Registry) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["zoo"], shell=args.shell), end="")
    return 0
