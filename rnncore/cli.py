"""What the instrument commands (``gradflow``, ``experiments``, ``bench``) share: a parser
whose errors are one line naming the flag, and checks of sizes, lists and output paths
made before any work starts, so that a bad flag never ends in a traceback or in a run
that is lost at its end.

    ap = cli.Parser(prog="python -m rnncore.gradflow", ...)
    ap.add_argument("--T", type=cli.at_least(1), ...)
    ap.add_argument("--depths", type=cli.int_list(1), ...)
    cli.make_out_dir(ap, "--out", args.out)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: message (see --help)``), exit 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r:.40}") from None


def at_least(low: int, high: int | None = None):
    """An argparse ``type``: an integer >= low (and <= high when given)."""
    def parse(text):
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def int_list(low: int, high: int | None = None):
    """An argparse ``type``: a non-empty comma list of distinct integers in [low, high]."""
    one = at_least(low, high)

    def parse(text):
        items = [v.strip() for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma list of integers, got none")
        values = [one(v) for v in items]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"lists a value twice: {text!r:.60}")
        return values
    parse.__name__ = "comma list of integers"
    return parse


def choice_list(choices, all_word: str | None = None):
    """An argparse ``type``: a non-empty comma list drawn from ``choices`` (a callable
    returning them is read when the flag is parsed, so registry additions count);
    ``all_word`` (e.g. "all") stands for every choice."""
    def parse(text):
        known = tuple(choices() if callable(choices) else choices)
        items = [v.strip() for v in text.split(",") if v.strip()]
        if all_word is not None and items == [all_word]:
            return list(known)
        if not items:
            raise argparse.ArgumentTypeError("expected a comma list, got none")
        unknown = [v for v in items if v not in known]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(repr(v) for v in unknown[:3])}; choose from "
                f"{', '.join(known)}" + (f" (or {all_word})" if all_word else ""))
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"lists a value twice: {text!r:.60}")
        return items
    parse.__name__ = "comma list"
    return parse


def _first_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def out_dir_problem(path) -> str | None:
    """Why ``path`` cannot be (made into) a directory we write to, or None."""
    path = Path(path)
    if str(path) == "":
        return "is empty"
    existing = _first_existing(path.absolute())
    if not existing.is_dir():
        return ("names a file, not a directory" if existing == path.absolute()
                else f"lies under the file {existing}")
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written ({existing} is not writable)"
    return None


def out_file_problem(path) -> str | None:
    """Why ``path`` cannot be written as a file, or None (an existing file is replaced)."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        return "is not a file name"
    full = path.absolute()
    if full.is_dir():
        return "names a directory, not a file"
    if full.exists() and not os.access(full, os.W_OK):
        return "is a file that cannot be written"
    parent = _first_existing(full.parent)
    if not parent.is_dir():
        return f"lies under the file {parent}"
    if parent != full.parent:
        return f"lies in a directory that does not exist ({full.parent})"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be written ({parent} is not writable)"
    return None


def make_out_dir(parser: argparse.ArgumentParser, flag: str, path):
    """Check ``path`` and create the directory now, before any work: a one-line error
    naming ``flag`` otherwise."""
    problem = out_dir_problem(path)
    if problem is None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as err:
            problem = f"cannot be created ({err.strerror or err})"
    if problem:
        parser.error(f"{flag} {path}: {problem}")


def check_out_file(parser: argparse.ArgumentParser, flag: str, path):
    """Check that ``path`` can be written as a file, by writing (and removing) a probe file
    beside it now, before any work: a one-line error naming ``flag`` otherwise."""
    problem = out_file_problem(path)
    if problem is None:
        probe = Path(path).absolute().with_name(f".{Path(path).name}.{os.getpid()}.probe")
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            problem = f"cannot be written ({err.strerror or err})"
    if problem:
        parser.error(f"{flag} {path}: {problem}")


def write_text_atomic(path, text: str):
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
