"""Help text layout shared by every ``zoo`` command: each option shows its default."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any


class HelpFormatter(argparse.HelpFormatter):
    """Options end with ``(default: X)``; indented lines of descriptions and epilogs
    (examples) are kept as written, the others wrapped.

    As :class:`argparse.ArgumentDefaultsHelpFormatter`, but an option whose help
    already names its default, or whose default is unset or ``False``, is left as is.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if paragraph:
                out.append(textwrap.fill(" ".join(paragraph), width, initial_indent=indent,
                                         subsequent_indent=indent))
                paragraph.clear()

        for line in text.splitlines():
            if line.strip() and not line[0].isspace():
                paragraph.append(line.strip())
                continue
            flush()
            out.append(indent + line)
        flush()
        return "\n".join(out)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction) and action.help is not argparse.SUPPRESS:
            # argparse measures sub-commands without their extra indent: a long name
            # (new-plugin) would get a line of its own; keep "name  help" on one line
            longest = max((len(name) for name in action.choices), default=0)
            self._action_max_length = max(self._action_max_length,
                                          longest + self._current_indent + 4)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or not action.option_strings or "default" in text:
            return text
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class ZooArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and its sub-commands' help) uses :class:`HelpFormatter`.

    ``help_tail``, if set, is called when the help is printed (and only then) for text
    shown after the epilog: what is installed, which parsing must not pay for.
    """

    help_tail: Callable[[], str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        text = super().format_help()
        if self.help_tail is not None:
            try:
                tail = self.help_tail()
            except Exception as exc:  # help must print whatever the plugins do
                tail = f"(cannot list them: {type(exc).__name__}: {exc})"
            text = text.rstrip("\n") + "\n\n" + tail.rstrip("\n") + "\n"
        return text


def set_help_tail(parser: argparse.ArgumentParser, tail: Callable[[], str]) -> None:
    """Show ``tail()`` at the end of ``parser``'s help, computed when it is printed."""
    if not isinstance(parser, ZooArgumentParser):
        raise TypeError(f"a help tail needs a ZooArgumentParser, got {type(parser).__name__}")
    parser.help_tail = tail


def train_default(field: str) -> str:
    """``(default: X)`` for a ``TrainConfig`` field, read from the model (no torch import)."""
    from zoo.spec.training import TrainConfig

    info = TrainConfig.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if value is None:
        shown = "auto" if field in ("channels_last", "batch_split", "num_threads") else "none"
    elif isinstance(value, bool):
        shown = "on" if value else "off"
    else:
        shown = str(value)
    return f"(default: {shown})"
