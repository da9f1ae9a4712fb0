"""
No module of the packages over 350 lines unless its docstring says why it is one module.

The convention: a module longer than :data:`MAX_LINES` (enet_ros and training's
enet_training, tests apart) has a paragraph in its module docstring that
starts with ``Why one module:`` and gives the reason its parts belong
together. Two jobs in one long file are split instead.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = (ROOT / 'enet_ros', ROOT / 'training' / 'enet_training')
MAX_LINES = 350
MARKER = 'Why one module:'


def _justified(docstring: str) -> bool:
    """Tell whether a paragraph of ``docstring`` starts with the marker and says something."""
    for paragraph in docstring.split('\n\n'):
        text = ' '.join(paragraph.split())
        if text.startswith(MARKER) and len(text) > len(MARKER) + 20:
            return True
    return False


def _long_unjustified():
    found = []
    for folder in FOLDERS:
        for path in sorted(folder.rglob('*.py')):
            text = path.read_text()
            lines = text.count('\n')
            if lines > MAX_LINES and not _justified(ast.get_docstring(ast.parse(text)) or ''):
                found.append(f'{path.relative_to(ROOT)}: {lines} lines')
    return found


def test_marker_is_recognised():
    assert _justified('Summary.\n\nWhy one module: the format and its checks are one table.')
    assert not _justified('Summary.\n\nWhy one module:')
    assert not _justified('Summary. Why one module: it is mentioned in passing, not a paragraph.')


def test_long_modules_say_why():
    found = _long_unjustified()
    assert not found, (f'modules over {MAX_LINES} lines without a "{MARKER}" paragraph in '
                       'their docstring (split them, or say why they are one):\n'
                       + '\n'.join(found))
