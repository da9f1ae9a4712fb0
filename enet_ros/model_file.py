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
input_size          ``[width, height]`` of the network input, multiples of 8
val_miou            held-out validation mIoU in [0, 1], or null (also null for a
                    model trained on its validation split: see ``training``)
training            free-form record of how the weights were made (optional)
=================== ===========================================================

Weights are stored as fp32 ``state_dict`` tensors of :class:`enet_ros.model.ENet`.
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

from .labels import ClassTable
from .model import ENet, OUTPUT_STRIDE

FORMAT_VERSION = 1
METADATA_KEY = 'enet_ros'
BUNDLED_MODEL = Path(__file__).resolve().parent / 'models' / 'enet_camvid.safetensors'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
        """Parse and validate; raise ValueError with the reason."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f'metadata is not valid JSON ({error})') from None
        if not isinstance(data, dict):
            raise ValueError('metadata is not a JSON object')
        version = data.get('format_version')
        if version != FORMAT_VERSION:
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
        try:
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
                training=dict(data.get('training') or {}),
                architecture=data.get('architecture', 'enet'),
                format_version=version,
            )
        except TypeError as error:
            raise ValueError(f'metadata has a value of the wrong type ({error})') from None


def _finite_number(value: object) -> bool:
    """Return whether ``value`` is an int or float (not a bool) other than NaN or infinity."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _metadata_problems(meta: ModelMetadata) -> list:
    problems = []
    if meta.architecture != 'enet':
        problems.append(f"architecture is {meta.architecture!r}, expected 'enet'")
    names = meta.class_names
    if not names or not all(isinstance(n, str) and n for n in names):
        problems.append('class_names must be a non-empty list of non-empty strings')
    elif len(set(names)) != len(names):
        problems.append('class_names has duplicates')
    if len(meta.colors) != len(names) or not all(
            len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in meta.colors):
        problems.append(f'colors must be {len(names)} [r, g, b] triples of 0-255 integers')
    if meta.void_id is not None and (
            not isinstance(meta.void_id, int) or 0 <= meta.void_id < len(names)
            or not 0 <= meta.void_id <= 255):
        problems.append(f'void_id {meta.void_id!r} must be null or an id in '
                        f'[{len(names)}, 255] (outside the predicted classes)')
    unknown = [n for n in meta.drivable_classes if n not in names]
    if unknown:
        problems.append(f'drivable_classes {unknown} are not class names')
    size = meta.input_size
    if (len(size) != 2 or not all(isinstance(v, int) and v > 0 and v % OUTPUT_STRIDE == 0
                                  for v in size)):
        problems.append(f'input_size {list(size)} must be [width, height], positive '
                        f'multiples of {OUTPUT_STRIDE}')
    for key in ('mean', 'std'):
        values = getattr(meta, key)
        if len(values) != 3 or not all(_finite_number(v) for v in values):
            problems.append(f'{key} must be three finite numbers')
    if len(meta.std) == 3 and any(_finite_number(v) and v <= 0 for v in meta.std):
        problems.append('std must be positive')
    if meta.val_miou is not None and not (
            isinstance(meta.val_miou, (int, float)) and 0 <= meta.val_miou <= 1):
        problems.append(f'val_miou {meta.val_miou!r} must be null or in [0, 1]')
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
    if not path.exists():
        hint = (' (the bundled default is missing: reinstall enet_ros or set model_path)'
                if path == BUNDLED_MODEL else '')
        raise ModelFileError(path, f'does not exist{hint}')
    if not path.is_file():
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
