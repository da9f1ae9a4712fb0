"""
No import circle among the package's modules (enet_ros and training's enet_training).

Every import statement counts, wherever it stands: at the top, inside a
function (a deferred import), or under ``if TYPE_CHECKING:``. A deferred or a
type-only import hides a circle from the interpreter, not from the reader:
the two modules still depend on each other, and the next refactor that moves
the import up turns it into an ImportError. So the rule is the simple one:
module A may not reach itself through the imports of the modules it imports.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {'enet_ros': ROOT / 'enet_ros',
            'enet_training': ROOT / 'training' / 'enet_training'}


def _modules() -> Dict[str, Path]:
    """Return {dotted module name: file} for every module of the packages."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob('*.py'):
            parts = list(path.relative_to(folder).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            modules['.'.join([package, *parts])] = path
    return modules


def _imported(name: str, path: Path, modules: Dict[str, Path]) -> Iterator[str]:
    """Yield the package modules that module ``name`` (at ``path``) imports, anywhere in it."""
    is_package = path.name == '__init__.py'
    package = name.split('.') if is_package else name.split('.')[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                base = '.'.join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [base] + [f'{base}.{alias.name}' for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition('.')[0]
            if target and target != name:
                yield target


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: set(_imported(name, path, modules)) for name, path in modules.items()}


def _circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Return one path per circle found (depth-first search, each node visited once)."""
    circles, state = [], {}

    def visit(name: str, trail: List[str]) -> None:
        state[name] = 'open'
        for target in sorted(graph[name]):
            if state.get(target) == 'open':
                circles.append(trail[trail.index(target):] + [name, target]
                               if target in trail else [name, target])
            elif target not in state:
                visit(target, trail + [name])
        state[name] = 'done'

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return circles


def test_graph_sees_the_packages():
    graph = _graph()
    assert 'enet_ros.node.segmentation_node' in graph
    assert 'enet_training.train' in graph
    assert 'enet_ros.segmenter' in graph['enet_ros.node.frame_setup']


def test_circle_detection():
    assert _circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c', 'a']]
    assert _circles({'a': {'b'}, 'b': set()}) == []


def test_no_import_circle():
    circles = _circles(_graph())
    assert not circles, 'import circles (every import counts, deferred and TYPE_CHECKING too):\n' \
        + '\n'.join(' -> '.join(circle) for circle in circles)
