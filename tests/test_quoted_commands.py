"""Every shell command quoted in the README, the notebooks and docs/experiments.md works.

The commands are read from the documents themselves — fenced blocks with no language (or
sh/bash/console), inline code spans that start like a command (``python …``, ``make …``,
``.venv/bin/…``, ``pytest …``, ``scripts/…``) and the ``$ …`` lines a notebook prints —
so a command that is mistyped, or that a later change breaks, fails here. Each is checked
in a cheap form:

- ``python -m rnncore.X ARGS``: ARGS go through that command's own parser and checks (no
  training, no output written except empty ``--out`` folders under a temporary folder);
  each module also answers ``python -m rnncore.X --help`` as a real subprocess; every
  quoted ``rnncore.sample`` command runs for real on a tiny checkpoint.
- ``python notebooks/build.py ARGS``: parsed, and every selector names a notebook.
- ``make T``: T is a target of the Makefile. ``pip install -e '.[E]'``: extra E exists in
  pyproject.toml. ``jupyter lab DIR``: the notebooks extra installs jupyter, DIR exists.
  ``pytest -m M``: marker M is declared. ``scripts/X``: an executable file.
  ``mpiexec -n N COMMAND``: N ≥ 1, COMMAND is checked as above and passes --distributed.
  ``git clone URL DIR && cd DIR``: the two names agree.

Placeholders in the documents (``NAME``, ``DIR``, ``…/best.npz``) are filled in first.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli on 3.10")

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "experiments.md",
             *sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))]
STARTS = ("python ", "python3 ", "make ", "pip ", ".venv/bin/", "pytest", "scripts/",
          "git clone", "PYTHONPATH=")
PLACEHOLDERS = {"NAME": "depth", "DIR": "out_dir", "runs/.../best.npz": "CHECKPOINT",
                "…/best.npz": "CHECKPOINT", "<this repository>": "https://example.org/rnncore",
                # the real corpus the docs name lies outside the project; any text file in it
                # stands in for parsing
                "../shared/data/tinyshakespeare.txt": str(ROOT / "README.md")}


def _load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build",
                                                  ROOT / "notebooks" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


# ------------------------------------------------------------------------ extraction
def _markdown_and_code(path: Path) -> tuple[str, str]:
    """(the document's markdown, its Python code); a notebook source gives both."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return text, ""
    cells = build.parse(text)
    # line 1 of a source says how to build it, outside any cell: count it as prose
    head = text.splitlines()[0].removeprefix("# ")
    return (head + "\n\n" + "\n\n".join(s for kind, s in cells if kind == "markdown"),
            "\n\n".join(s for kind, s in cells if kind == "code"))


def _join_continuations(lines):
    out, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            out.append(pending + line)
            pending = ""
    return out + ([pending] if pending else [])


def _fenced(markdown: str):
    """Command lines of the fenced blocks with no language or a shell language."""
    for match in re.finditer(r"^```([\w-]*)\n(.*?)^```", markdown, re.S | re.M):
        if match.group(1) in ("", "sh", "bash", "shell", "console"):
            for line in _join_continuations(match.group(2).splitlines()):
                line = line.strip()  # a command, not a line of printed output
                if line.startswith(STARTS + ("cd ", "export ")) or re.match(r"[A-Z_]+=", line):
                    yield line


def _inline(markdown: str):
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", prose.replace("\n", " ")):
        span = " ".join(span.split())
        if span.startswith(STARTS):
            yield span


def quoted_commands():
    """[(document, command line)] in document order, duplicates removed."""
    found = []
    for path in DOCUMENTS:
        markdown, code = _markdown_and_code(path)
        name = path.relative_to(ROOT).as_posix()
        found += [(name, line) for line in _fenced(markdown)]
        found += [(name, span) for span in _inline(markdown)]
        found += [(name, m) for m in re.findall(r"""["']\$ ([^"']+)["']""", code)]
    seen, unique = set(), []
    for item in found:
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique


def simple_commands(line: str, variables: dict) -> list[list[str]]:
    """The line as argv lists: comments dropped, ``&&`` split, $VARs and placeholders
    filled in; a ``VAR="…"`` assignment is remembered in ``variables`` and gives none."""
    for key, value in PLACEHOLDERS.items():
        line = line.replace(key, value)
    for key, value in variables.items():
        line = line.replace("$" + key, value)
    words = shlex.split(line, comments=True)
    commands, current = [], []
    for word in words + ["&&"]:
        if word in ("&&", ";"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    out = []
    for argv in commands:
        assignment = re.fullmatch(r"([A-Z_]+)=(.*)", argv[0])
        if assignment and len(argv) == 1:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # FOO=1 command …
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


COMMANDS = quoted_commands()


def _all_argvs():
    variables, out = {}, []
    for doc, line in COMMANDS:
        for argv in simple_commands(line, variables):
            out.append((doc, line, argv))
    return out


ARGVS = _all_argvs()


def test_the_documents_quote_commands():
    text = "\n".join(line for _, line in COMMANDS)
    for expected in ("make lab", "rnncore.sample", "rnncore.train", "rnncore.experiments",
                     "notebooks/build.py", "git clone"):
        assert expected in text, f"no quoted command mentions {expected!r}"
    assert len(ARGVS) >= 20


# ------------------------------------------------------------------------ checks
class _Parsed(Exception):
    pass


def _parse_with(module, argv, monkeypatch):
    """Run the command's argument parsing (and the checks made before any work)."""
    name = module.__name__
    if name in ("rnncore.train", "rnncore.compare_torch"):
        from rnncore import train
        cfg = vars(train.build_parser().parse_args(argv))
        train.check_config(cfg)
    elif name == "rnncore.sample":
        module.build_parser().parse_args(argv)
    elif hasattr(module, "parse_args"):
        module.parse_args(argv)
    else:  # stop the command right after its parser has accepted argv
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, args=None, namespace=None):
            original(self, args, namespace)
            raise _Parsed

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with contextlib.suppress(_Parsed):
            module.main(argv)


def _python(argv, doc, line, tmp_path, monkeypatch):
    argv = argv[1:]
    if argv[:1] == ["-m"]:
        target, args = argv[1], argv[2:]
        if target == "venv":
            return
        assert target.startswith("rnncore."), f"{doc}: `{line}`: unexpected module {target}"
        module = importlib.import_module(target)
        if hasattr(module, "__path__"):  # a package: python -m runs its __main__
            module = importlib.import_module(target + ".__main__")
    else:
        script, args = argv[0], argv[1:]
        assert (ROOT / script).is_file(), f"{doc}: `{line}`: no file {script}"
        if script == "notebooks/build.py":
            module = build
            for s in (a for a in args if not a.startswith("-")):
                assert build.sources([s]), f"{doc}: `{line}`: no notebook matches {s!r}"
        else:
            spec = importlib.util.spec_from_file_location("quoted_script", ROOT / script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            # a GPU recording script takes no flags: it imports, and has its entry point
            assert hasattr(module, "main"), f"{doc}: `{line}`: {script} has no main(argv)"
            assert not args, f"{doc}: `{line}`: no check for {script}'s arguments"
            return
    args = [str(tmp_path / "model.npz") if a == "CHECKPOINT" else a for a in args]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            _parse_with(module, args, monkeypatch)
    except SystemExit as exit_:
        refusal = stderr.getvalue().strip()
        if "cuda" in args and "needs CuPy" in refusal:  # a GPU command on a CPU machine
            return
        assert exit_.code in (0, None), f"{doc}: `{line}` is refused by its parser: {refusal}"
    except ValueError as err:  # the config checks (rnncore.runconfig.ConfigError)
        raise AssertionError(f"{doc}: `{line}`: {err}") from None
    finally:
        monkeypatch.undo()


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pip(argv, doc, line):
    extras = _pyproject()["project"]["optional-dependencies"]
    for arg in argv[2:]:
        match = re.fullmatch(r"(?:\.|rnncore)\[([\w,-]+)\]", arg)
        if match:
            for extra in match.group(1).split(","):
                assert extra in extras, f"{doc}: `{line}`: pyproject has no extra {extra!r}"


def _make_targets():
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w-]+)\s*:(?!=)", text, re.M))


@pytest.mark.parametrize("doc,line,argv", ARGVS, ids=[f"{d}:{' '.join(a)[:60]}"
                                                     for d, _, a in ARGVS])
def test_quoted_command(doc, line, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out folders the parsers create land here
    (tmp_path / "docs" / "bench").mkdir(parents=True, exist_ok=True)  # where results go
    program = argv[0].removeprefix(".venv/bin/")
    if program in ("cd", "export"):
        return
    if program == "git":
        assert argv[1] == "clone", f"{doc}: `{line}`: only git clone is quoted"
        cds = [a for a in simple_commands(line, {}) if a[0] == "cd"]
        if len(argv) > 3 and cds:
            assert cds[0][1] == argv[3], f"{doc}: `{line}`: clones into {argv[3]}, cds elsewhere"
    elif program == "make":
        missing = set(argv[1:]) - _make_targets()
        assert not missing, f"{doc}: `{line}`: the Makefile has no target {sorted(missing)}"
    elif program in ("python", "python3"):
        _python(argv, doc, line, tmp_path, monkeypatch)
    elif program == "pip":
        _pip(argv, doc, line)
    elif program == "jupyter":
        assert "jupyter" in " ".join(_pyproject()["project"]["optional-dependencies"]
                                     ["notebooks"]), "the notebooks extra lacks jupyter"
        for folder in argv[2:]:
            assert (ROOT / folder).is_dir(), f"{doc}: `{line}`: no folder {folder}"
    elif program == "pytest":
        markers = [m.split(":")[0] for m in _pyproject()["tool"]["pytest"]["ini_options"]
                   ["markers"]]
        for i, arg in enumerate(argv):
            if arg == "-m":
                assert argv[i + 1].removeprefix("not ") in markers, f"{doc}: `{line}`"
    elif program == "mpiexec":
        assert argv[1:2] == ["-n"] and argv[2].isdigit() and int(argv[2]) >= 1, \
            f"{doc}: `{line}`: quote mpiexec as mpiexec -n N COMMAND"
        assert "--distributed" in argv, f"{doc}: `{line}`: without --distributed each rank " \
            "would train alone"
        test_quoted_command(doc, line, argv[3:], tmp_path, monkeypatch)
    elif program.startswith("scripts/"):
        assert os.access(ROOT / program, os.X_OK), f"{doc}: `{line}`: not an executable file"
    else:
        pytest.fail(f"{doc}: `{line}`: no check for the program {program!r}; add one")


MODULES = sorted({a[2] for _, _, a in ARGVS
                  if a[0].endswith(("python", "python3")) and a[1:2] == ["-m"]
                  and a[2].startswith("rnncore.")})


@pytest.mark.parametrize("module", MODULES)
def test_quoted_module_answers_help(module):
    """``python -m rnncore.X --help`` in a fresh interpreter: the module is a command."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"python -m {module} --help: {done.stderr.strip()[-300:]}"
    assert "usage" in done.stdout.lower()


def test_quoted_sample_commands_run(tmp_path, monkeypatch):
    """Each quoted ``rnncore.sample`` command, run for real on a tiny checkpoint."""
    from rnncore import sample, train

    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        train.main(["--steps", "2", "--layers", "1", "--hidden", "8", "--embed", "4",
                    "--batch-size", "2", "--seq-len", "8", "--eval-every", "2",
                    "--eval-chars", "64", "--no-plot", "--quiet", "--out", "run"])
    checkpoint = str(tmp_path / "run" / "best.npz")
    ran = 0
    for doc, line, argv in ARGVS:
        if argv[:3] != ["python", "-m", "rnncore.sample"]:
            continue
        args = [checkpoint if a == "CHECKPOINT" or a.endswith((".npz", ".safetensors"))
                else a for a in argv[3:]]
        assert checkpoint in args, f"{doc}: `{line}`: which checkpoint?"
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = sample.main(args)
            except SystemExit as exit_:
                code = exit_.code
        assert code in (0, None), f"{doc}: `{line}` failed: {err.getvalue().strip()}"
        assert out.getvalue(), f"{doc}: `{line}` printed nothing"
        ran += 1
    assert ran >= 2, "expected the README's and notebook 6's sample commands"


@pytest.mark.parametrize("line", [
    "python -m rnncore.sample --checkpoint runs/words-lstm/best.npz",  # the old, wrong form
    "python -m rnncore.train --cell lstn",
    "python -m rnncore.experiments dept --quick",
    "python notebooks/build.py --execute 99",
    "make labs",
    ".venv/bin/pip install -e '.[notebook]'",
    "pytest -m gpus",
    ".venv/bin/mpiexec -n 2 .venv/bin/python -m rnncore.train --steps 10",
    ".venv/bin/mpiexec -n 2 .venv/bin/python -m rnncore.train --distributed --stepz 10",
])
def test_a_wrong_command_is_caught(line, tmp_path, monkeypatch):
    """The checks above fail on a mistyped command (so a passing run means something)."""
    with pytest.raises(AssertionError):
        for argv in simple_commands(line, {}):
            test_quoted_command("doc", line, argv, tmp_path, monkeypatch)
