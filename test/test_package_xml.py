"""package.xml declares every third-party import of the package and nothing it does not use."""

import ast
from pathlib import Path
import re
import sys
import xml.etree.ElementTree as ElementTree

ROOT = Path(__file__).resolve().parents[1]
#: Where the installed package's code lives (tests, training and benchmarks are not installed).
SOURCES = [ROOT / 'enet_ros', ROOT / 'launch']
#: Python module -> rosdep key, where they differ (ROS packages: the same name).
ROSDEP_KEYS = {'cv2': 'python3-opencv', 'numpy': 'python3-numpy', 'tqdm': 'python3-tqdm',
               'rosbags': 'python3-rosbags-pip', 'matplotlib': 'python3-matplotlib',
               'yaml': 'python3-yaml', 'tf2_ros': 'tf2_ros_py',
               # zstd for MCAP chunks comes with rosbags: backports.zstd, the standard library's
               # compression.zstd from Python 3.14
               'backports': 'python3-rosbags-pip', 'compression': 'python3-rosbags-pip'}
#: No rosdep key: named in package.xml's comment and installed with pip (README).
PIP_ONLY = {'torch', 'safetensors', 'openvino'}


def _third_party_imports() -> dict:
    """Return top-level module -> files importing it, for enet_ros/ and launch/."""
    found = {}
    for folder in SOURCES:
        for path in folder.rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split('.')[0]
                    if top not in sys.stdlib_module_names and top != 'enet_ros':
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _package_xml():
    return ElementTree.parse(ROOT / 'package.xml').getroot()


def test_every_import_is_declared():
    """Each third-party import has an exec_depend (rosdep key), or is a documented pip one."""
    declared = {e.text for e in _package_xml().findall('exec_depend')}
    comments = (ROOT / 'package.xml').read_text()
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        if module in PIP_ONLY:
            assert re.search(rf'\b{module}\b', comments.split('rosdep has no key')[1]), module
            continue
        key = ROSDEP_KEYS.get(module, module)
        if key not in declared:
            missing.append(f'{module} (key {key}) imported in {sorted(files)}')
    assert not missing, 'not in package.xml: ' + '; '.join(missing)


def test_every_declared_dependency_is_used():
    """No exec_depend that the code never imports (cv_bridge was one)."""
    imported = {ROSDEP_KEYS.get(m, m) for m in _third_party_imports()}
    unused = [e.text for e in _package_xml().findall('exec_depend') if e.text not in imported]
    assert not unused, f'declared but never imported: {unused}'


def test_pip_only_dependencies_are_in_setup_py():
    """The pip-only modules are install_requires or extras of setup.py."""
    setup = (ROOT / 'setup.py').read_text()
    for module in PIP_ONLY:
        assert f"'{module}" in setup, module
