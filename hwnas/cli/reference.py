"""The CLI reference page (docs/cli.md), written from build_parser() so it cannot drift from
the code: every verb with its description, usage, arguments and their help.

    python -m hwnas.cli.reference > docs/cli.md

The page is rendered here from the parser's actions, not by argparse's help formatter, whose
layout changes between Python versions (3.13 did) and with the terminal's width.
tests/test_docs.py fails when the page in the repository is not what this writes."""

from __future__ import annotations

import argparse
import sys
import textwrap

from hwnas.cli.main import build_parser

WIDTH = 96

HEADER = """\
# CLI reference

Generated from `hwnas/cli/main.py`'s argument parser by `python -m hwnas.cli.reference >
docs/cli.md`; do not edit by hand (`tests/test_docs.py` fails when it is out of date). Every
verb prints the same help with `--help`. A user error is one message and exit code 2;
`hwnas --debug VERB ...` shows the traceback and SSH library logs.
"""


def verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def verb_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Each verb's one-line help, as `hwnas --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action._choices_actions)
    return []


def anchor(prog: str, name: str) -> str:
    return f"{prog} {name}".replace(" ", "-")  # the toc extension's slug of `hwnas search`


def shown(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def metavar(action: argparse.Action) -> str:
    """As the usage line writes it, with its count: `profiles [profiles ...]`, `[space]`."""
    name = base_name(action)
    return {"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [{name} ...]"}.get(
        action.nargs, name)


def base_name(action: argparse.Action) -> str:
    if action.metavar is not None:
        name = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None:
        name = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        name = action.dest if not action.option_strings else action.dest.upper()
    return name


def invocation(action: argparse.Action) -> str:
    """How the argument is written: `space`, `--device DEVICE`, `--fork`."""
    if not action.option_strings:
        return base_name(action)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    return ", ".join(f"{option} {metavar(action)}" for option in action.option_strings)


def usage(prog: str, parser: argparse.ArgumentParser) -> str:
    words = []
    for action in shown(parser):
        if action.option_strings:
            word = action.option_strings[0] + ("" if action.nargs == 0 else " " + metavar(action))
            words.append(word if action.required else f"[{word}]")
        else:
            words.append(metavar(action))
    if verbs(parser):
        words.append("VERB ...")
    return textwrap.fill(" ".join([prog, *words]), WIDTH, subsequent_indent=" " * (len(prog) + 1),
                         break_long_words=False, break_on_hyphens=False)


def help_text(action: argparse.Action) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion: %(default)s, %(choices)s ...
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        text = text % params
    return text


def arguments(parser: argparse.ArgumentParser) -> str:
    lines = []
    for action in shown(parser):
        lines.append(invocation(action))
        text = help_text(action)
        if text:
            lines += textwrap.wrap(text, WIDTH, initial_indent="    ", subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def section(prog: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    out = ["#" * level + f" `{prog}`", ""]
    if parser.description:
        out += [parser.description, ""]
    out += ["```text", usage(prog, parser), "```", ""]
    if shown(parser):
        out += ["```text", arguments(parser), "```", ""]
    if verbs(parser):
        out += ["Verbs:", ""] + [f"- [`{prog} {choice.dest}`](#{anchor(prog, choice.dest)}): "
                                 f"{choice.help}" for choice in verb_actions(parser)] + [""]
    for name, sub in verbs(parser).items():
        out += section(f"{prog} {name}", sub, level)
    return out


def reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    return "\n".join([HEADER, *section("hwnas", parser, 2)]).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
