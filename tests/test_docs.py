"""The documentation runs as written: every code block of README.md and docs/*.md, every example's --help.

How blocks run
--------------
Every ```python and ```bash block of ``README.md`` and ``docs/*.md`` is a test
(``test_doc_block[README.md:3:python:L57]``), run in the order of its file in a
fresh folder per file, which holds a copy of ``examples/`` and five small
phantom CTs (64^3 voxels of 4 mm) under ``data/ct/``, ``data/train/`` and
``data/test/``. Python blocks of a file share one namespace; a block runs
after the blocks above it (they are run first when it is selected alone).
Bash blocks run line by line: ``onthefly ...`` and ``python -m onthefly ...``
through ``onthefly.cli.main`` in this process, ``python examples/X.py ...``
as the example's ``__main__``, ``torchrun ...`` in a subprocess, ``make -n
TARGET`` (a dry run) in the repository; any other program must be replaced
or skipped by a directive.

An HTML comment right above a block (blank lines between are allowed)
changes how its test runs; the reader of the rendered page does not see it:

* ``<!-- doctest: replace "OLD" "NEW" -->`` runs the block with every OLD
  replaced by NEW (small settings: ``"steps=1000" "steps=2"``); an OLD that is
  not in the block fails the test, so replacements cannot go stale;
* ``<!-- doctest: append "FLAGS" -->`` adds FLAGS at the end of every command
  of a shell block (argparse takes the last value of a flag given twice);
* ``<!-- doctest: skip "REASON" -->`` skips the block; pytest reports it by
  name with the reason (``pytest -ra``);
* ``<!-- doctest: slow -->`` marks it slow; every later block of the same file
  is then slow too (it may depend on this one).

Commands written inline (in backticks: `onthefly ...`, `python examples/...`,
`make ...`, `pip ...`) must also appear in a block of the same file, where
they are run or skipped by name. ``docs/cli.md`` is the ``--help`` of every
command, generated: ``python tests/test_docs.py`` writes it again.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CLI_REFERENCE = ROOT / "docs" / "cli.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
RUNNABLE = ("python", "bash", "sh")
DIRECTIVE = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
INLINE_COMMAND = re.compile(r"`((?:onthefly|python|\.venv/bin/python|OMP_NUM_THREADS=\S+|torchrun|make|pip) [^`]*)`")


# ---------------------------------------------------------------------------
# Reading the blocks


@dataclass
class Block:
    path: Path
    index: int  # 1-based among the file's runnable blocks
    line: int  # of the opening fence
    language: str
    code: str
    replacements: list[tuple[str, str]] = field(default_factory=list)
    appended: str = ""
    skip: str | None = None
    slow: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.index}:{self.language}:L{self.line}"

    def source(self) -> str:
        """The code as the test runs it (replacements applied; each OLD must occur)."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise AssertionError(f"{self.name}: the doctest replacement {old!r} is not in the block")
            code = code.replace(old, new)
        return code


def _apply_directive(block: Block, text: str) -> None:
    words = shlex.split(text)
    if words[:1] == ["skip"] and len(words) == 2:
        block.skip = words[1]
    elif words[:1] == ["replace"] and len(words) == 3:
        block.replacements.append((words[1], words[2]))
    elif words[:1] == ["append"] and len(words) == 2:
        block.appended = f"{block.appended} {words[1]}".strip()
    elif words == ["slow"]:
        block.slow = True
    else:
        block.problems.append(f"unknown doctest directive {text!r} (expected skip \"REASON\", replace \"OLD\" "
                              f"\"NEW\", append \"FLAGS\" or slow)")


def parse_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The runnable blocks of a Markdown file with their directives, and the misplaced directives."""
    lines = path.read_text().splitlines()
    blocks, pending, problems = [], [], []
    number = 0
    while number < len(lines):
        line = lines[number]
        directive = DIRECTIVE.match(line)
        fence = FENCE.match(line)
        if directive:
            pending.append((number + 1, directive.group(1)))
        elif fence:
            end = next((i for i in range(number + 1, len(lines)) if lines[i].strip() == "```"), len(lines))
            language = fence.group(1).lower()
            if language in RUNNABLE:
                block = Block(path, len(blocks) + 1, number + 1, language, "\n".join(lines[number + 1:end]) + "\n")
                for _, text in pending:
                    _apply_directive(block, text)
                blocks.append(block)
            elif pending:
                problems.append(f"{path.name}:{pending[0][0]}: a doctest directive above a {language or 'plain'} block")
            pending = []
            number = end
        elif line.strip() and pending:
            problems.append(f"{path.name}:{pending[0][0]}: a doctest directive not followed by a code block")
            pending = []
        number += 1
    for earlier, later in zip(blocks, blocks[1:]):  # a block may depend on any block above it
        later.slow = later.slow or earlier.slow
    return blocks, problems


PARSED = {path: parse_blocks(path) for path in DOCUMENTS}
BLOCKS = [block for blocks, _ in PARSED.values() for block in blocks]


# ---------------------------------------------------------------------------
# Running them


def _phantom_files(folder: Path, smooth_phantom_hu) -> None:
    """Five small phantom CTs (64^3 voxels of 4 mm, 256 mm across) as NIfTI files under data/."""
    import nibabel as nib
    import numpy as np

    for subfolder, seeds in (("ct", range(5)), ("train", range(3)), ("test", range(3, 5))):
        (folder / "data" / subfolder).mkdir(parents=True)
        for seed in seeds:
            hu = smooth_phantom_hu((64, 64, 64), seed=seed).numpy()
            nib.save(nib.Nifti1Image(hu, np.diag([4.0, 4.0, 4.0, 1.0])),
                     str(folder / "data" / subfolder / f"patient{seed}.nii.gz"))


class DocumentRun:
    """One document's working folder, Python namespace and the blocks already run."""

    def __init__(self, folder: Path, make_phantom_hu) -> None:
        self.folder = folder
        shutil.copytree(ROOT / "examples", folder / "examples")
        _phantom_files(folder, make_phantom_hu)
        self.namespace: dict = {"__name__": "__doc_block__"}
        self.done: set[int] = set()

    def run(self, block: Block) -> None:
        with _working_directory(self.folder):
            if block.language == "python":
                exec(compile(block.source(), block.name, "exec"), self.namespace)
            else:
                for command in _commands(block.source()):
                    _run_command(command + shlex.split(block.appended), self.folder, block.name)
        self.done.add(block.index)


@contextlib.contextmanager
def _working_directory(folder: Path):
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _commands(script: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", script)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def _run_command(words: list[str], folder: Path, name: str) -> None:
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # environment settings: the run is in-process
        words = words[1:]
    program = words[0]
    if program in ("python", "python3", ".venv/bin/python", "python -m") and words[1:3] == ["-m", "onthefly"]:
        words = ["onthefly", *words[3:]]
    if words[0] == "onthefly":
        from onthefly.cli import main

        assert main(words[1:]) == 0, f"{name}: {shlex.join(words)} failed"
    elif program in ("python", "python3", ".venv/bin/python") and words[1].startswith("examples/"):
        _run_example(folder / words[1], words[2:], name)
    elif words[:2] == ["make", "-n"]:  # a dry run: the Makefile has the target and its recipe expands
        completed = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert completed.returncode == 0, f"{name}: {shlex.join(words)}\n{completed.stderr[-3000:]}"
    elif program == "torchrun":
        environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", *words[1:]], cwd=folder,
                                   capture_output=True, text=True, timeout=600, env=environment)
        assert completed.returncode == 0, f"{name}: {shlex.join(words)}\n{completed.stderr[-3000:]}"
    else:
        raise AssertionError(f"{name}: no way to run {shlex.join(words)!r} here: give the block a doctest "
                             f"directive (skip \"REASON\", or replace it with a runnable command)")


def _run_example(path: Path, arguments: list[str], name: str) -> None:
    argv = sys.argv
    sys.argv = [str(path), *arguments]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_code:
        assert exit_code.code in (0, None), f"{name}: {path.name} exited with {exit_code.code}"
    finally:
        sys.argv = argv


_RUNS: dict[Path, DocumentRun] = {}


@pytest.fixture(scope="module", autouse=True)
def _bundled_ct_read_once():
    """``onthefly.example_volume`` reads the bundled CT (2-3 s) once per argument set in this module
    (volumes are immutable; every block still gets the CT it asks for)."""
    import functools
    import sys

    import onthefly.volume

    original = onthefly.volume.example_volume
    cached = functools.wraps(original)(functools.lru_cache(maxsize=None)(original))
    patched = [module for name, module in list(sys.modules.items())
               if name.split(".")[0] == "onthefly" and getattr(module, "example_volume", None) is original]
    for module in patched:
        module.example_volume = cached
    yield
    for module in patched:
        module.example_volume = original


@pytest.fixture
def document_run(tmp_path_factory, make_phantom_hu):
    def get(path: Path) -> DocumentRun:
        if path not in _RUNS:
            _RUNS[path] = DocumentRun(tmp_path_factory.mktemp(path.stem), make_phantom_hu)
        return _RUNS[path]

    return get


def _block_parameters():
    for block in BLOCKS:
        marks = [pytest.mark.slow] if block.slow else []
        yield pytest.param(block, id=block.name, marks=marks)


@pytest.mark.parametrize("block", list(_block_parameters()))
def test_doc_block(block: Block, document_run):
    if block.skip is not None:
        pytest.skip(f"{block.name}: {block.skip}")
    assert not block.problems, block.problems
    run = document_run(block.path)
    for earlier in PARSED[block.path][0][: block.index - 1]:
        if earlier.index not in run.done and earlier.skip is None:
            run.run(earlier)
    run.run(block)


# ---------------------------------------------------------------------------
# Rules of the documentation


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_directives_sit_right_above_a_block(path):
    blocks, problems = PARSED[path]
    assert not problems and not [p for block in blocks for p in block.problems]


def _program(command: str) -> tuple[str, ...]:
    """What a command runs, for matching inline commands with blocks: ``("onthefly", "train")``,
    ``("python", "examples/x.py")``, ``("make", "demo")``."""
    words = [w for w in shlex.split(command, comments=True) if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    if words and words[0] in ("python3", ".venv/bin/python"):
        words[0] = "python"
    if words[:3] == ["python", "-m", "onthefly"]:
        words = ["onthefly", *words[3:]]
    return tuple(words[:2])


KNOWN_UNCOVERED: dict[str, str] = {}  # document -> why an inline command has no block (none today)


@pytest.mark.parametrize("path", [path for path in DOCUMENTS if path != CLI_REFERENCE],  # generated from --help
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_inline_commands_appear_in_a_block(path, request):
    name = str(path.relative_to(ROOT))
    if name in KNOWN_UNCOVERED:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_UNCOVERED[name]))
    text = path.read_text()
    outside_blocks = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    in_blocks = {_program(line) for block in PARSED[path][0] for line in block.code.splitlines() if line.strip()}
    missing = [command for command in INLINE_COMMAND.findall(outside_blocks) if _program(command) not in in_blocks]
    assert not missing, f"{name}: commands written inline with no block that runs or skips them: {missing}"


KNOWN_MISSING_REFERENCES: dict[str, str] = {}  # file -> why it may name a missing file (none today)
PATH_LIKE = re.compile(r"(?<![\w/.-])((?:src|docs|examples|benchmarks|tests)/[\w./-]*\w|[\w-]+\.md)(?![\w/])")


@pytest.mark.parametrize("path", [*DOCUMENTS, ROOT / "benchmarks" / "README.md", *EXAMPLES,
                                  *sorted((ROOT / "src" / "onthefly").rglob("*.py"))],
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_no_references_to_files_outside_the_repository(path, request):
    """Every repository path a document, an example or a docstring names exists (outputs/ and data/ are made
    by commands; ``*`` patterns and placeholders in angle brackets are not paths)."""
    name = str(path.relative_to(ROOT))
    if name in KNOWN_MISSING_REFERENCES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN_MISSING_REFERENCES[name]))
    text = path.read_text()
    named = {match for match in PATH_LIKE.findall(text) if "*" not in match and "<" not in match}
    missing = sorted(name for name in named if not (ROOT / name).exists() and not (path.parent / name).exists())
    assert not missing, f"{path.relative_to(ROOT)} names files that are not in the repository: {missing}"


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def _shown_pictures() -> dict[str, str]:
    """``{picture path: the caption below it}`` for every picture shown in the documents."""
    shown = {}
    for path in DOCUMENTS:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            for target in IMAGE.findall(line):
                image = (path.parent / target).resolve().relative_to(ROOT)
                shown[str(image)] = " ".join(lines[number + 1: number + 12])
    return shown


SHOWN = _shown_pictures()
PICTURES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "images").glob("*.png"))


def _making_command(image: str) -> list[str] | None:
    """The command in the picture's caption that writes it (`onthefly ... --output IMAGE`, or an example's)."""
    for command in re.findall(r"`((?:onthefly|python examples/[\w.]+) [^`]*)`", SHOWN.get(image, "")):
        words = shlex.split(command)
        if words[-2:] == ["--output", image]:
            return words
    return None


@pytest.mark.parametrize("image", PICTURES)
def test_every_picture_is_shown_with_a_caption_and_the_command_that_makes_it(image, request):
    assert image in SHOWN, f"{image} is in the repository but shown nowhere"
    assert len(SHOWN[image]) > 80, f"{image}: no caption under the picture"
    assert _making_command(image), f"{image}: its caption gives no `onthefly ... --output {image}` command"


def test_shown_pictures_exist():
    assert not [image for image in SHOWN if not (ROOT / image).exists()]


@pytest.mark.slow
@pytest.mark.parametrize("image", [image for image in PICTURES if (_making_command(image) or [""])[0] == "onthefly"])
def test_pictures_are_what_their_command_makes(image, tmp_path, capsys):
    """The command under a picture, run again into a temporary file, draws the same picture."""
    import matplotlib.image

    from onthefly.cli import main

    words = _making_command(image)
    fresh = tmp_path / Path(image).name
    assert main([*words[1:-1], str(fresh)]) == 0
    committed, made = matplotlib.image.imread(ROOT / image), matplotlib.image.imread(fresh)
    assert committed.shape == made.shape
    assert float(abs(committed - made).mean()) < 0.01


# ---------------------------------------------------------------------------
# Examples


def _example_parameters(known_failures: dict[str, str], slow: bool = False):
    for path in EXAMPLES:
        marks = []
        if path.name in known_failures:
            marks = [pytest.mark.xfail(strict=True, reason=known_failures[path.name])] + [pytest.mark.slow] * slow
        yield pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("path", list(_example_parameters({})))
def test_examples_honour_help_and_write_nothing(path, tmp_path, capsys):
    copy = tmp_path / "examples" / path.name
    copy.parent.mkdir()
    shutil.copy(path, copy)
    with _working_directory(tmp_path):
        argv = sys.argv
        sys.argv = [str(copy), "--help"]
        try:
            with pytest.raises(SystemExit) as exit_code:
                runpy.run_path(str(copy), run_name="__main__")
        finally:
            sys.argv = argv
    assert exit_code.value.code == 0
    assert "usage:" in capsys.readouterr().out
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p != copy)
    assert not written, f"{path.name} --help wrote {written}"


@pytest.mark.parametrize("path", list(_example_parameters({})))
def test_examples_write_under_outputs_only(path):
    text = path.read_text()
    assert not re.search(r"""["'](?:\.\./)*docs/""", text) and "parents[1] / \"docs\"" not in text, (
        f"{path.name} writes into docs/ by default; examples write under outputs/ unless told otherwise")


# ---------------------------------------------------------------------------
# The generated command-line reference


def cli_reference() -> str:
    """``docs/cli.md``: the ``--help`` of every command, as argparse prints it at 100 columns."""
    from onthefly.cli import _parser

    sections = ["# Command-line reference", "",
                "Generated from `onthefly COMMAND --help` (regenerate: `python tests/test_docs.py`). "
                "Angles are in degrees on the command line, lengths in millimetres.", ""]
    commands = [[]] + [[name] for name in ("demo", "preview", "render", "benchmark")] + [
        ["train", "correspondence"], ["train", "classifier"], ["prepare"]]
    for command in commands:
        buffer = io.StringIO()
        with (mock.patch("torch.cuda.is_available", return_value=False),  # the defaults of a machine without CUDA
              contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit)):
            _parser().parse_args([*command, "--help"])
        title = " ".join(["onthefly", *command])
        sections += [f"## `{title}`", "", "```text", buffer.getvalue().rstrip(), "```", ""]
    return "\n".join(sections)


def test_cli_reference_is_up_to_date(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert CLI_REFERENCE.exists() and CLI_REFERENCE.read_text() == cli_reference(), (
        "docs/cli.md differs from the commands' --help: regenerate it with `python tests/test_docs.py`")


if __name__ == "__main__":
    os.environ["COLUMNS"] = "100"
    sys.path.insert(0, str(ROOT / "src"))
    CLI_REFERENCE.write_text(cli_reference())
    print(f"wrote {CLI_REFERENCE.relative_to(ROOT)}")
