"""
The documentation stays true to the code.

Checked in README.md, docs/*.md, bench/README.md and training/*.md: every relative link
and #anchor resolves; every command names an executable, make target, script, module or
launch file that exists; every ``name:=`` is a launch argument of launch/segment.launch.py
and docs/node.md lists them all; docs/node.md's parameter table names exactly the
parameters the node declares; every topic in a topic table is one the node creates, and
docs/node.md's table has every topic it creates. The node's names come from two
in-process nodes (plain, and managed after configure and activate); no process starts.
A failure names the document, the line and what is missing.
"""

import ast
from pathlib import Path
import random
import re
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / 'README.md', ROOT / 'bench' / 'README.md']
              + list((ROOT / 'docs').glob('*.md')) + list((ROOT / 'training').glob('*.md')))
#: The pages whose tables and commands describe the node (README and docs/).
NODE_DOCS = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
NODE_PAGE = ROOT / 'docs' / 'node.md'
NODE_NAME = 'segmentation_node'

#: Commands the docs may start a shell line with that are not this repository's.
OTHER_COMMANDS = {
    'cd', 'colcon', 'export', 'git', 'make', 'mkdir', 'pip', 'profile', 'python', 'python3',
    'rosdep', 'ros2', 'source', 'tar', 'tensorboard', 'torchrun', 'trtexec'}
#: Parameters that ROS 2 and the libraries the node uses declare, not the node's table.
FOREIGN_PARAMETERS = ('use_sim_time', 'start_type_description_service', 'qos_overrides.',
                      'diagnostic_updater.')
#: Topics every node (or every managed node) has: not in the node's topic table.
FOREIGN_TOPICS = {'/rosout', '/parameter_events', f'/{NODE_NAME}/transition_event'}

LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
CODE_SPAN = re.compile(r'`([^`]+)`')
LAUNCH_ASSIGNMENT = re.compile(r'(?<![\w/.-])([A-Za-z_]\w*):=')
SCRIPT_PATH = re.compile(r'(?<![\w/.])((?:training/)?(?:scripts|bench|test|training/test)'
                         r'/[\w/.-]+\.(?:py|sh))\b')
CONFIG_PATH = re.compile(r'(?<![\w/.])(config/[\w.-]+\.(?:yaml|xml|rviz))\b')
MODULE = re.compile(r'(?:^|\s)-m\s+((?:enet_ros|enet_training)[\w.]*)')


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _lines(path: Path) -> Iterator[Tuple[int, str, str]]:
    """Yield (line number, text, fence language or None outside code blocks)."""
    fence = None
    for number, line in enumerate(path.read_text().split('\n'), 1):
        stripped = line.strip()
        if stripped.startswith('```'):
            fence = None if fence is not None else stripped[3:].strip()
            continue
        yield number, line, fence


def _slug(heading: str) -> str:
    """Return GitHub's anchor for a heading's text."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def _anchors(path: Path) -> Set[str]:
    anchors: Set[str] = set()
    seen: Dict[str, int] = {}
    for _, line, fence in _lines(path):
        match = re.match(r'#{1,6}\s+(.*)', line)
        if fence is None and match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f'{slug}-{count}')
    return anchors


def _table(path: Path, heading: str) -> List[Tuple[int, List[str]]]:
    """Return the (line number, cells) of the first table under ``## heading``."""
    rows: List[Tuple[int, List[str]]] = []
    inside = False
    for number, line, fence in _lines(path):
        if fence is not None:
            continue
        if re.match(r'#{1,6}\s', line):
            if rows:
                break
            inside = _slug(line.lstrip('#')) == _slug(heading)
            continue
        if inside and line.startswith('|'):
            cells = [cell.strip() for cell in re.split(r'(?<!\\)\|', line)[1:-1]]
            if not set(''.join(cells)) <= set('-: '):
                rows.append((number, cells))
        elif rows:
            break
    assert rows, f'{_rel(path)}: no table under the heading "{heading}"'
    return rows[1:]  # without the header row


def _console_scripts() -> Set[str]:
    """Return the console scripts of setup.py and training/setup.py."""
    names = set()
    for setup in (ROOT / 'setup.py', ROOT / 'training' / 'setup.py'):
        names.update(re.findall(r"'([\w-]+)\s*=\s*[\w.]+:\w+'", setup.read_text()))
    assert {'segmentation_node', 'enet-train'} <= names, names
    return names


def _make_targets() -> Set[str]:
    return set(re.findall(r'^([\w-]+):', (ROOT / 'Makefile').read_text(), re.MULTILINE))


def _enet_train_commands() -> Set[str]:
    source = (ROOT / 'training' / 'enet_training' / 'cli.py').read_text()
    return set(re.findall(r"add_parser\(\s*'([\w-]+)'", source))


def _launch_arguments() -> Set[str]:
    """Return the arguments launch/segment.launch.py declares (read from its source)."""
    tree = ast.parse((ROOT / 'launch' / 'segment.launch.py').read_text())
    names = {node.args[0].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, 'id', getattr(
                 node.func, 'attr', None)) == 'DeclareLaunchArgument'
             and node.args and isinstance(node.args[0], ast.Constant)}
    assert names, 'no DeclareLaunchArgument in launch/segment.launch.py'
    return names


def test_code_blocks_are_closed():
    """Every ``` block ends: an open one would hide the rest of the page from these checks."""
    problems = []
    for doc in DOCS:
        fence = None
        for number, line in enumerate(doc.read_text().split('\n'), 1):
            if line.strip().startswith('```'):
                fence = None if fence is not None else number
        if fence is not None:
            problems.append(f'{_rel(doc)}:{fence}: this code block is never closed')
    assert not problems, '\n'.join(problems)


def test_relative_links_and_anchors_resolve():
    """Every relative link names a file that exists, and its #anchor a heading there."""
    problems = []
    for doc in DOCS:
        for number, line, fence in _lines(doc):
            if fence is not None:
                continue
            for target in LINK.findall(line):
                if re.match(r'[a-z]+:', target):
                    continue  # http:, https:, mailto:
                path, _, anchor = target.partition('#')
                resolved = (doc.parent / path).resolve() if path else doc
                where = f'{_rel(doc)}:{number}'
                if not resolved.exists():
                    problems.append(f'{where}: link target {path!r} does not exist')
                elif anchor and resolved.suffix == '.md' and anchor not in _anchors(resolved):
                    problems.append(f'{where}: no heading for #{anchor} in {_rel(resolved)}')
    assert not problems, '\n'.join(problems)


def _commands(doc: Path) -> Iterator[Tuple[int, str, bool]]:
    """Yield (line, command text, is a shell line) from code blocks and code spans."""
    continued = False
    for number, line, fence in _lines(doc):
        if fence is not None:
            text = line.split(' #')[0].strip() if not line.lstrip().startswith('#') else ''
            shell = fence in ('bash', 'sh', 'shell') and not continued and bool(text)
            continued = text.endswith('\\')
            if text:
                yield number, text, shell
        else:
            for span in CODE_SPAN.findall(line):
                yield number, span, False


def _first_command(text: str) -> str:
    """Return a shell line's command word, past VAR=value assignments."""
    words = text.replace('[', ' ').replace(']', ' ').replace('$(', ' ').split()
    while words and re.match(r'\w+=', words[0]):
        words.pop(0)
    return words[0] if words else ''


def test_commands_name_what_exists():
    """ros2 run / launch, make, enet-train, scripts, modules and shell commands exist."""
    scripts = _console_scripts()
    targets = _make_targets()
    subcommands = _enet_train_commands()
    launch_files = {path.name for path in (ROOT / 'launch').glob('*.launch.py')}
    problems = []
    for doc in DOCS:
        for number, text, shell in _commands(doc):
            where = f'{_rel(doc)}:{number}'
            for executable in re.findall(r'ros2 run enet_ros ([\w-]+)', text):
                if executable not in scripts:
                    problems.append(f'{where}: `ros2 run enet_ros {executable}`: no such '
                                    f'console script in setup.py')
            for launch_file in re.findall(r'ros2 launch enet_ros ([\w.-]+)', text):
                if launch_file not in launch_files:
                    problems.append(f'{where}: no launch/{launch_file}')
            for target in re.findall(r'(?:^|[\s;(])make ([\w-]+)', text):
                if target not in targets:
                    problems.append(f'{where}: `make {target}`: no such target in the Makefile')
            for command in re.findall(r'(?:^|[\s;(])enet-train ([\w-]+)', text):
                if command not in subcommands and not command.startswith('-'):
                    problems.append(f'{where}: `enet-train {command}`: no such subcommand')
            for script in SCRIPT_PATH.findall(text) + CONFIG_PATH.findall(text):
                if not ((ROOT / script).exists() or (doc.parent / script).exists()):
                    problems.append(f'{where}: {script} does not exist')
            for module in MODULE.findall(text):
                parts = module.split('.')
                base = ROOT / 'training' if parts[0] == 'enet_training' else ROOT
                path = base.joinpath(*parts)
                if not (path.with_suffix('.py').exists() or (path / '__init__.py').exists()):
                    problems.append(f'{where}: `-m {module}`: no such module')
            if shell:
                command = _first_command(text)
                if command not in OTHER_COMMANDS and command not in scripts \
                        and not (ROOT / command).exists() and not command.startswith('/'):
                    problems.append(f'{where}: `{command}` is neither a console script of '
                                    'this repository nor a file in it')
    assert not problems, '\n'.join(problems)


def test_launch_arguments_are_declared_and_documented():
    """Every `name:=` in the docs is declared; docs/node.md's table lists every argument."""
    declared = _launch_arguments()
    problems = []
    for doc in NODE_DOCS + [ROOT / 'training' / 'README.md']:
        for number, line, _ in _lines(doc):
            for name in LAUNCH_ASSIGNMENT.findall(line):
                if re.search(rf'-p\s+{name}:=', line):
                    continue  # a node parameter on a ros2 run command line
                if name not in declared:
                    problems.append(f'{_rel(doc)}:{number}: {name}:= is not an argument of '
                                    'launch/segment.launch.py')
    listed = {}
    for number, cells in _table(NODE_PAGE, 'Launch arguments'):
        for name in re.findall(r'`(\w+):=`', cells[0]):
            listed[name] = number
    problems += [f'docs/node.md: launch argument {name}:= is not in the "Launch arguments" '
                 'table' for name in sorted(declared - set(listed))]
    problems += [f'docs/node.md:{listed[name]}: {name}:= is not declared by the launch file'
                 for name in sorted(set(listed) - declared)]
    assert not problems, '\n'.join(problems)


@pytest.fixture(scope='module')
def node_interface(random_model_file) -> Dict[str, Set[str]]:
    """
    Return the parameters and topics of the plain and the managed node, built in process.

    The plain node runs on raw images; the managed one, configured and activated, on
    compressed images and with its bond to a lifecycle manager.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    # The node's classes (h31node renames the modules; fix these two imports then).
    from enet_ros.node.lifecycle_node import SegmentationLifecycleNode
    from enet_ros.node.segmentation_node import SegmentationNode

    context = Context()
    rclpy.init(context=context, domain_id=random.Random().randint(1, 100))
    # The cheapest start: no compiling, torch (no OpenVINO export), a small network input.
    common = [Parameter('model_path', value=str(random_model_file)),
              Parameter('device', value='cpu'), Parameter('torch_compile', value=False),
              Parameter('inference_backend', value='torch'),
              Parameter('network_width', value=64), Parameter('network_height', value=48)]
    parameters: Set[str] = set()
    topics: Set[str] = set()
    try:
        plain = SegmentationNode(context=context, parameter_overrides=common)
        managed = SegmentationLifecycleNode(context=context, parameter_overrides=common + [
            Parameter('input_transport', value='compressed')])
        try:
            from lifecycle_msgs.msg import State
            from rclpy.lifecycle import TransitionCallbackReturn

            assert managed.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert managed.trigger_activate() == TransitionCallbackReturn.SUCCESS
            for node in (plain, managed):
                parameters.update(node._parameters)
                topics.update(p.topic_name for p in node.publishers)
                topics.update(s.topic_name for s in node.subscriptions)
            managed.trigger_deactivate()
            managed.trigger_cleanup()
            assert managed._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED
        finally:
            plain.destroy_node()
            managed.destroy_node()
    finally:
        context.try_shutdown()
    return {'parameters': parameters, 'topics': topics}


def _table_names(cell: str) -> List[str]:
    """Return the names in a table's first cell: `a`, `b` and `camera_pose.x`, `.y`."""
    names: List[str] = []
    for name in re.findall(r'`([^`]+)`', cell):
        if name.startswith('.') and names:
            name = names[-1].rsplit('.', 1)[0] + name
        names.append(name)
    return names


def test_node_md_documents_every_declared_parameter(node_interface):
    """docs/node.md's parameter table names exactly the parameters the node declares."""
    declared = {name for name in node_interface['parameters']
                if not name.startswith(FOREIGN_PARAMETERS)}
    documented = {}
    for number, cells in _table(NODE_PAGE, 'Parameters'):
        for name in _table_names(cells[0]):
            documented[name] = number
    problems = [f'docs/node.md: parameter {name} is declared by the node but not in the '
                '"Parameters" table' for name in sorted(declared - set(documented))]
    problems += [f'docs/node.md:{documented[name]}: parameter {name} is not declared by '
                 'the node' for name in sorted(set(documented) - declared)]
    for number, cells in _table(ROOT / 'README.md', 'Parameters you change first'):
        problems += [f'README.md:{number}: parameter {name} is not declared by the node'
                     for name in _table_names(cells[0]) if name not in declared]
    assert not problems, '\n'.join(problems)


def _resolve_topic(name: str) -> str:
    name = name.split()[0]
    if name.startswith('~/'):
        return f'/{NODE_NAME}/{name[2:]}'
    return name if name.startswith('/') else f'/{name}'


def test_topic_tables_name_the_nodes_topics(node_interface):
    """Each topic in README's and docs/node.md's tables is the node's; node.md has them all."""
    created = node_interface['topics']
    problems = []
    for doc in (ROOT / 'README.md', NODE_PAGE):
        documented = set()
        for number, cells in _table(doc, 'Topics'):
            for name in _table_names(cells[0]):
                topic = _resolve_topic(name)
                documented.add(topic)
                if topic not in created:
                    problems.append(f'{_rel(doc)}:{number}: topic {name} ({topic}) is not one '
                                    f'the node creates ({sorted(created)})')
        if doc == NODE_PAGE:
            missing = sorted(created - documented - FOREIGN_TOPICS)
            problems += [f'docs/node.md: the node creates {topic}, which is not in the '
                         '"Topics" table' for topic in missing]
    assert not problems, '\n'.join(problems)
