"""
The model file: ENet weights plus the metadata the node needs, in one safetensors file.

Safetensors holds only tensors and a JSON header, so loading runs no code from
the file (unlike ``torch.load`` of a pickle). The metadata lives under the
header key ``enet_ros`` as one JSON document:

=================== ===========================================================
key                 meaning
=================== ===========================================================
format_version      integer, :data:`FORMAT_VERSION`
architecture        ``"enet"``
dataset             where the classes come from (``camvid``, ``cityscapes``, ...)
class_names         C names; class id = index
colors              C ``[r, g, b]`` palette entries, 0-255
void_id             ground-truth id ignored by metrics (or null); never predicted
drivable_classes    default drivable class names, a subset of class_names
mean, std           RGB normalisation on [0, 1] pixel values
input_size          ``[width, height]`` of the network input, multiples of 8, each
                    side at most :data:`MAX_INPUT_SIDE` and at most
                    :data:`MAX_INPUT_PIXELS` pixels in all
val_miou            held-out validation mIoU in [0, 1], or null (also null for a
                    model trained on its validation split: see ``training``)
training            free-form record of how the weights were made (optional, an
                    object); where present, ``val_seen_in_training`` is a list of
                    split names and ``train_only_run`` an object whose
                    ``val_miou`` is a number or null
=================== ===========================================================

Every key is checked against this schema, JSON types included (a boolean is
not a number; a string is not a list of names): metadata that does not fit is
refused with one line naming the key. Names (``dataset``, ``class_names``)
hold no control characters; nesting deeper than :data:`MAX_METADATA_DEPTH`
levels is refused.

Weights are stored as fp32 ``state_dict`` tensors of :class:`enet_ros.model.ENet`.

Why one module: the file format is one schema, written and read here; the
per-key checks are the schema, and saving and loading must agree on it.
"""

from dataclasses import asdict, dataclass, field
import json
import math
import os
from pathlib import Path
import stat
from typing import Any, Dict, Mapping, Optional, Tuple, Union
import uuid

import torch

from .labels import ClassTable, name_problem
from .model import ENet, OUTPUT_STRIDE

FORMAT_VERSION = 1
METADATA_KEY = 'enet_ros'
BUNDLED_MODEL = Path(__file__).resolve().parent / 'models' / 'enet_camvid.safetensors'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The largest network input side: the range of the node's network_width / network_height.
MAX_INPUT_SIDE = 4096
#: The most network input pixels: a 3840x2160 frame, the node's default max_pixels. ENet
#: needs about 230 bytes a pixel to run in fp32 on the CPU (2 GB at this size); a network
#: input larger than the largest frame accepted buys nothing.
MAX_INPUT_PIXELS = 3840 * 2160
#: Deepest nesting of JSON arrays and objects in the metadata (the schema itself needs 3).
MAX_METADATA_DEPTH = 32

PathLike = Union[str, os.PathLike]


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt or does not match ENet."""

    def __init__(self, path: PathLike, problem: str):
        super().__init__(f"model file '{path}': {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True)
class ModelMetadata:
    """Everything about a model except its weights (see the module docstring)."""

    class_names: Tuple[str, ...]
    colors: Tuple[Tuple[int, int, int], ...]
    void_id: Optional[int]
    drivable_classes: Tuple[str, ...]
    input_size: Tuple[int, int]
    dataset: str = 'unknown'
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    val_miou: Optional[float] = None
    training: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    architecture: str = 'enet'
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        """Check internal consistency; raise ValueError with the reason."""
        problems = _metadata_problems(self)
        if problems:
            raise ValueError('; '.join(problems))

    @property
    def num_classes(self) -> int:
        """Return the number of predicted classes C."""
        return len(self.class_names)

    @property
    def class_table(self) -> ClassTable:
        """Return the class table view of this metadata."""
        return ClassTable(self.dataset, self.class_names, self.colors, self.void_id,
                          self.drivable_classes)

    def seen_split_note(self, split: str) -> Optional[str]:
        """
        Return a warning when ``split`` was trained on (``--train-split train+val``), else None.

        Scores on such a split measure seen data, not accuracy; the note names
        the held-out score of the same recipe trained without it, when recorded.
        """
        if split not in (self.training.get('val_seen_in_training') or ()):
            return None
        held_out = (self.training.get('train_only_run') or {}).get('val_miou')
        return (f"note: this model was trained on the '{split}' split too, so scores on it "
                'are on seen frames, not held-out accuracy'
                + (f' (the same recipe trained without it scored {100 * held_out:.2f} mIoU '
                   f"on '{split}')" if isinstance(held_out, (int, float)) else ''))

    @classmethod
    def from_class_table(cls, table: ClassTable, input_size: Tuple[int, int],
                         **kwargs: Any) -> 'ModelMetadata':
        """Metadata for a network trained on ``table``'s classes."""
        return cls(class_names=table.names, colors=table.colors, void_id=table.void_id,
                   drivable_classes=table.drivable, input_size=tuple(input_size),
                   dataset=table.dataset, **kwargs)

    def to_json(self) -> str:
        """Serialise to the JSON stored in the file header."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> 'ModelMetadata':
        """Parse and validate against the schema; raise ValueError naming the key at fault."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError('metadata is nested too deeply to parse (more than '
                             f'{MAX_METADATA_DEPTH} levels are refused)') from None
        except ValueError as error:  # JSONDecodeError, or e.g. a 5000-digit number
            raise ValueError(f'metadata is not valid JSON ({error})') from None
        if not isinstance(data, dict):
            raise ValueError('metadata is not a JSON object')
        deep = _nested_deeper_than(data, MAX_METADATA_DEPTH)
        if deep is not None:
            raise ValueError(f'metadata key {deep} is nested more than {MAX_METADATA_DEPTH} '
                             'levels deep')
        version = data.get('format_version')
        if type(version) is not int or version != FORMAT_VERSION:
            raise ValueError(f'unsupported format_version {version!r} '
                             f'(this enet_ros reads version {FORMAT_VERSION})')
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown metadata keys {unknown}')
        required = ('class_names', 'colors', 'void_id', 'drivable_classes', 'input_size')
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f'metadata lacks {missing}')
        for key, value in data.items():
            _check_json_type(key, value)
        training = data.get('training') or {}
        for key, check in _TRAINING_KEYS.items():
            if training.get(key) is not None:
                check(f'training.{key}', training[key])
        return cls(
            class_names=tuple(data['class_names']),
            colors=tuple(tuple(c) for c in data['colors']),
            void_id=data['void_id'],
            drivable_classes=tuple(data['drivable_classes']),
            input_size=tuple(data['input_size']),
            dataset=data.get('dataset', 'unknown'),
            mean=tuple(data.get('mean', IMAGENET_MEAN)),
            std=tuple(data.get('std', IMAGENET_STD)),
            val_miou=data.get('val_miou'),
            training=dict(training),
            architecture=data.get('architecture', 'enet'),
            format_version=version,
        )


def _json_kind(value: object) -> str:
    """Name a JSON value's type for a message: 'a list', 'a boolean', ..."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return f'a boolean ({json.dumps(value)})'
    if isinstance(value, (int, float)):
        return f'a number ({value!r})'
    if isinstance(value, str):
        return 'a string'
    return 'a list' if isinstance(value, list) else 'an object'


def _integer(value: object) -> bool:
    """Return whether ``value`` is a JSON integer (not a boolean, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    """Return whether ``value`` is a JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expect(key: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f'metadata key {key} must be {expected}, not {_json_kind(value)}')


def _list_of(key: str, value: object, test, item: str, length: Optional[int] = None) -> None:
    """Check that ``value`` is a list (of ``length`` items) whose items pass ``test``."""
    count = '' if length is None else f'{length} '
    _expect(key, value, isinstance(value, list), f'a list of {count}{item}s')
    if length is not None and len(value) != length:
        raise ValueError(f'metadata key {key} must be a list of {length} {item}s, not '
                         f'{len(value)}')
    article = 'an' if item[0] in 'aeiou' else 'a'
    for index, entry in enumerate(value):
        _expect(f'{key}[{index}]', entry, test(entry), f'{article} {item}')


def _check_json_type(key: str, value: object) -> None:
    """Raise ValueError naming ``key`` when ``value`` is not of the schema's JSON type."""
    if key in ('architecture', 'dataset'):
        _expect(key, value, isinstance(value, str), 'a string')
    elif key in ('class_names', 'drivable_classes'):
        _list_of(key, value, lambda v: isinstance(v, str), 'string')
    elif key == 'colors':
        _expect(key, value, isinstance(value, list), 'a list of [r, g, b] integer triples')
        for index, color in enumerate(value):
            _list_of(f'colors[{index}]', color, _integer, 'integer', 3)
    elif key == 'input_size':
        _list_of(key, value, _integer, 'integer', 2)
    elif key in ('mean', 'std'):  # the numbers: _metadata_problems
        _expect(key, value, isinstance(value, list), 'a list of 3 numbers')
    elif key == 'void_id':
        _expect(key, value, value is None or _integer(value), 'an integer or null')
    elif key == 'val_miou':
        _expect(key, value, value is None or _number(value), 'a number or null')
    elif key == 'training':
        _expect(key, value, value is None or isinstance(value, dict), 'an object or null')


def _check_train_only_run(key: str, value: object) -> None:
    _expect(key, value, isinstance(value, dict), 'an object')
    held_out = value.get('val_miou')
    _expect(f'{key}.val_miou', held_out, held_out is None or _number(held_out),
            'a number or null')


#: The keys of the free-form ``training`` record that enet_ros reads, and their checks.
_TRAINING_KEYS = {
    'val_seen_in_training': lambda key, value: _list_of(key, value,
                                                        lambda v: isinstance(v, str), 'string'),
    'train_only_run': _check_train_only_run,
}


def _nested_deeper_than(data: object, limit: int) -> Optional[str]:
    """Return the key path of a value nested more than ``limit`` levels deep, else None."""
    stack = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        if depth > limit:
            return ''.join(f'[{k}]' if isinstance(k, int) else f'.{k}' for k in path)[1:]
        stack.extend((child, depth + 1, path + (key,)) for key, child in items)
    return None


def input_size_problem(size: Tuple[int, ...]) -> Optional[str]:
    """
    Say what is wrong with a network input ``(width, height)``, or None if it is usable.

    Positive multiples of 8 (ENet's output stride), each side at most
    :data:`MAX_INPUT_SIDE`, at most :data:`MAX_INPUT_PIXELS` pixels.
    """
    if len(size) != 2 or not all(_integer(v) and v > 0 and v % OUTPUT_STRIDE == 0
                                 for v in size):
        return f'must be [width, height], positive multiples of {OUTPUT_STRIDE}'
    width, height = size
    if max(width, height) > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
        return (f'is too large: each side at most {MAX_INPUT_SIDE} and at most '
                f'{MAX_INPUT_PIXELS} pixels (3840 x 2160) in all')
    return None


def _finite_number(value: object) -> bool:
    """Return whether ``value`` is an int or float (not a bool) other than NaN or infinity."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _metadata_problems(meta: ModelMetadata) -> list:
    problems = []
    if meta.architecture != 'enet':
        problems.append(f"architecture is {meta.architecture!r}, expected 'enet'")
    if not isinstance(meta.dataset, str):
        problems.append(f'dataset {meta.dataset!r} must be a string')
    elif name_problem(meta.dataset):
        problems.append(f'dataset {meta.dataset!r} {name_problem(meta.dataset)}')
    names = meta.class_names
    if not names or not all(isinstance(n, str) and n for n in names):
        problems.append('class_names must be a non-empty list of non-empty strings')
    elif len(set(names)) != len(names):
        problems.append('class_names has duplicates')
    else:
        bad = [(index, name_problem(n)) for index, n in enumerate(names) if name_problem(n)]
        if bad:
            index, problem = bad[0]
            problems.append(f'class_names[{index}] {names[index]!r} {problem}')
    if len(meta.colors) != len(names) or not all(
            len(c) == 3 and all(_integer(v) and 0 <= v <= 255 for v in c)
            for c in meta.colors):
        problems.append(f'colors must be {len(names)} [r, g, b] triples of 0-255 integers')
    if meta.void_id is not None and (
            not _integer(meta.void_id) or 0 <= meta.void_id < len(names)
            or not 0 <= meta.void_id <= 255):
        problems.append(f'void_id {meta.void_id!r} must be null or an id in '
                        f'[{len(names)}, 255] (outside the predicted classes)')
    unknown = [n for n in meta.drivable_classes if n not in names]
    if unknown:
        problems.append(f'drivable_classes {unknown} are not class names')
    size_problem = input_size_problem(meta.input_size)
    if size_problem:
        problems.append(f'input_size {list(meta.input_size)} {size_problem}')
    for key in ('mean', 'std'):
        values = getattr(meta, key)
        if len(values) != 3 or not all(_finite_number(v) for v in values):
            problems.append(f'{key} must be three finite numbers')
    if len(meta.std) == 3 and any(_finite_number(v) and v <= 0 for v in meta.std):
        problems.append('std must be positive')
    if meta.val_miou is not None and not (_number(meta.val_miou) and 0 <= meta.val_miou <= 1):
        problems.append(f'val_miou {meta.val_miou!r} must be null or in [0, 1]')
    if not isinstance(meta.training, dict):
        problems.append('training must be an object')
    else:
        for key, check in _TRAINING_KEYS.items():
            if meta.training.get(key) is not None:
                try:
                    check(f'training.{key}', meta.training[key])
                except ValueError as error:
                    problems.append(str(error).replace('metadata key ', '', 1))
    if len(names) > 255:
        problems.append('at most 255 classes fit a mono8 label image')
    return problems


@dataclass(frozen=True)
class LoadedModel:
    """A validated model file: metadata and fp32 weights on the CPU."""

    path: str
    metadata: ModelMetadata
    state_dict: Mapping[str, torch.Tensor]

    def build(self) -> ENet:
        """Build a CPU fp32 ENet in eval mode with these weights."""
        model = ENet(self.metadata.num_classes)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


def save_model_file(path: PathLike, model: Union[ENet, Mapping[str, torch.Tensor]],
                    metadata: ModelMetadata) -> Path:
    """Write ``model`` (an ENet or its state_dict) and ``metadata`` atomically to ``path``."""
    from safetensors.torch import save_file

    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {name: t.detach().to('cpu', torch.float32).contiguous()
               if t.is_floating_point() else t.detach().cpu().contiguous()
               for name, t in state.items()}
    _check_weights(path, tensors, metadata.num_classes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f'.{path.name}.{uuid.uuid4().hex}.tmp'))
    try:
        # safetensors (like mkstemp) creates its file 0600, which would hide the model from
        # other users: give it the mode that open() gives a new file under the umask.
        open(tmp, 'xb').close()
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        save_file(tensors, tmp, metadata={METADATA_KEY: metadata.to_json()})
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_PICKLE_SIGNATURES = (b'\x80', b'PK\x03\x04')


def _safetensors_head(head: bytes, path: Path) -> bool:
    """
    Tell whether the first 9 bytes of ``path`` open a safetensors file.

    Safetensors starts with the JSON header's length (8 bytes, little endian)
    and then the header's ``{``; a length whose low byte is 0x80 looks like a
    pickle's first byte, so the signature check alone would refuse good files.
    """
    length = int.from_bytes(head[:8], 'little')
    return head[8:9] == b'{' and 0 < length <= path.stat().st_size - 8


def load_model_file(path: Optional[PathLike] = None) -> LoadedModel:
    """
    Read and validate a model file (``None`` or empty: the bundled default).

    Raises :class:`ModelFileError` naming the file and the problem.
    """
    from safetensors import safe_open

    path = Path(path) if path else BUNDLED_MODEL
    try:
        exists, regular = path.exists(), path.is_file()
    except (OSError, ValueError) as error:  # a name too long, a NUL byte, ...
        raise ModelFileError(path, f'cannot be used as a path '
                                   f'({getattr(error, "strerror", None) or error})') from None
    if not exists:
        hint = (' (the bundled default is missing: reinstall enet_ros or set model_path)'
                if path == BUNDLED_MODEL else '')
        raise ModelFileError(path, f'does not exist{hint}')
    if not regular:
        raise ModelFileError(path, 'is not a regular file')
    try:
        with open(path, 'rb') as stream:
            head = stream.read(9)
    except OSError as error:
        raise ModelFileError(path, f'cannot be read ({error.strerror})') from None
    if not head:
        raise ModelFileError(path, 'is empty (0 bytes)')
    if len(head) < 8:
        raise ModelFileError(path, f'is truncated ({len(head)} bytes, not a safetensors file)')
    if head.startswith(_PICKLE_SIGNATURES) and not _safetensors_head(head, path):
        raise ModelFileError(path, 'is a pickle / torch.save checkpoint, which can run code '
                                   'when loaded; refused. Export a .safetensors model file '
                                   'with enet-train export')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as reader:
            header = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    except Exception as error:  # safetensors raises several types for corrupt files
        raise ModelFileError(path, f'is not a valid safetensors file '
                                   f'(truncated or corrupt: {error})') from None
    if METADATA_KEY not in header:
        raise ModelFileError(path, f"has no '{METADATA_KEY}' metadata (not an enet_ros model "
                                   'file)')
    try:
        metadata = ModelMetadata.from_json(header[METADATA_KEY])
    except ValueError as error:
        raise ModelFileError(path, f'bad metadata: {error}') from None
    _check_weights(path, tensors, metadata.num_classes)
    return LoadedModel(str(path), metadata, tensors)


def _check_weights(path: PathLike, tensors: Mapping[str, torch.Tensor], num_classes: int):
    expected = {name: tuple(t.shape) for name, t in ENet(num_classes).state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f'{name} {tuple(tensors[name].shape)} (expected {shape})'
             for name, shape in expected.items()
             if name in tensors and tuple(tensors[name].shape) != shape]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing tensors (e.g. {missing[:3]})')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})')
    if wrong:
        problems.append(f'{len(wrong)} tensors of the wrong shape for {num_classes} classes '
                        f'(e.g. {wrong[:2]})')
    if problems:
        raise ModelFileError(path, 'weights do not match ENet: ' + '; '.join(problems))
    bad = [name for name, t in tensors.items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelFileError(path, f'weights contain NaN or infinity (e.g. {bad[:3]})')
