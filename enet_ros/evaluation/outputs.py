"""
Output paths of the bag tools: checked before any work, written after the results are shown.

A tool checks every output path it was given (``--json``, ``--report``,
``--output-bag``, ``--record-bag``, ``dataset_to_bag``'s bag) before it reads a
frame, so a path that can never be written (its folder is a file, not
writable, the file is a folder) costs no evaluation: :class:`OutputPathError`,
one line, exit code 2. What can still fail later (a full disk) is
:class:`OutputWriteError`: the tool has printed its table by then, names the
file in one line and exits with code 3. No rclpy.
"""

from contextlib import suppress
import os
from pathlib import Path
import sys
from typing import Any, Callable, Dict, Sequence, Tuple, Type, Union

PathLike = Union[str, os.PathLike]
#: Exit code of a tool whose output path was refused before the work started.
EXIT_OUTPUT_REFUSED = 2
#: Exit code of a tool whose results were shown but an output could not be written.
EXIT_OUTPUT_FAILED = 3


class OutputPathError(ValueError):
    """An output path refused before any work: it cannot or must not be written."""


class OutputWriteError(OSError):
    """An output that could not be written (disk full, I/O error); its partial file is gone."""


class ResultsNotWritten(OutputWriteError):
    """The work is done (``report`` holds its results) but outputs could not be written."""

    def __init__(self, report: Dict[str, Any], failures: Sequence[OutputWriteError]):
        super().__init__('; '.join(str(failure) for failure in failures))
        self.report = report
        self.failures = list(failures)


def check_folder_for(path: PathLike, what: str) -> None:
    """
    Raise :class:`OutputPathError` unless ``path``'s folder exists or can be made, writable.

    ``what`` names the output in the message (e.g. ``--json``).
    """
    path = Path(path)
    folder = path.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{what} '{path}' cannot be written: '{folder}' is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} '{path}' cannot be written: folder '{folder}' is not "
                              'writable')


def check_output_file(path: PathLike, what: str) -> None:
    """Raise :class:`OutputPathError` when the file ``path`` cannot be created or replaced."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} '{path}' is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{what} '{path}' exists and is not writable")
    check_folder_for(path, what)


def check_distinct(outputs: Dict[str, PathLike], bags: Sequence[str] = ()) -> None:
    """
    Raise :class:`OutputPathError` when two outputs are one path, or a file is inside a bag.

    ``outputs``: option -> path of the outputs given; ``bags``: which of them are bag folders.
    """
    resolved = {option: Path(path).resolve() for option, path in outputs.items()}
    options = list(resolved)
    for index, option in enumerate(options):
        for other in options[index + 1:]:
            if resolved[option] == resolved[other]:
                raise OutputPathError(f'{option} and {other} are the same path '
                                      f"'{outputs[option]}'")
            for bag, inner in ((option, other), (other, option)):
                if bag in bags and resolved[bag] in resolved[inner].parents:
                    raise OutputPathError(f"{inner} '{outputs[inner]}' would be written inside "
                                          f"the bag {bag} '{outputs[bag]}'")


def write_text(path: PathLike, text: str, what: str) -> None:
    """Write ``text`` to ``path`` (its folder made); :class:`OutputWriteError` on failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        with suppress(OSError):
            path.unlink(missing_ok=True)  # a truncated file is no result
        raise OutputWriteError(f"{what} '{path}' could not be written: "
                               f'{error.strerror or error}') from None


def run_reporting(tool: str, body: Callable[[], int],
                  input_errors: Tuple[Type[BaseException], ...]) -> int:
    """
    Run an evaluation tool's ``body``; turn its errors into lines on stderr and an exit code.

    A refused output path: 2; results printed but not written: 3 (one line
    per file); ``input_errors`` (bad bag, model, ...): 1.
    """
    try:
        return body()
    except OutputPathError as error:
        print(f'{tool}: error: {error}', file=sys.stderr)
        return EXIT_OUTPUT_REFUSED
    except ResultsNotWritten as error:
        for failure in error.failures:
            print(f'{tool}: error: {failure}', file=sys.stderr)
        return EXIT_OUTPUT_FAILED
    except input_errors as error:
        print(f'{tool}: error: {error}', file=sys.stderr)
        return 1
