"""
Datasets of your own: the Pascal VOC / CVAT layout and a plain layout of id images.

Core module: numpy at import; OpenCV and PyYAML are imported when a file is
read. Training (``enet-train --dataset voc|plain``) and the bag tools read
the layouts through it, so both see the same classes and the same checks.

VOC / CVAT "Segmentation mask 1.1" (what CVAT, Datumaro and other VOC-style
tools export for semantic segmentation)::

    <root>/labelmap.txt                        name:r,g,b:parts:actions a line
    <root>/JPEGImages/<id>.jpg (.jpeg, .png)    the frames
    <root>/SegmentationClass/<id>.png           one colour per label map entry
    <root>/ImageSets/Segmentation/<split>.txt   one <id> a line

* Class ids are the label map's entries in file order, void entries left out.
  Without ``labelmap.txt`` the 21 Pascal VOC classes and colours apply, as in
  CVAT and Datumaro.
* ``background`` is a class like any other, as VOC and CVAT define it: CVAT
  adds it (0,0,0) and paints every unannotated pixel with it. For sparse
  annotation, where unannotated is not background, make it void
  (``void_labels=('background',)``, ``enet-train --void-label background``).
* Void (ignored by the loss and the metrics; id :data:`VOID_ID`, 255 as in
  VOC): entries named ``void``, ``ignore`` or ``ignored`` (Datumaro's name for
  VOC's 255), entries named in ``void_labels``, and VOC's border colour
  (224,224,192, palette index 255) unless an entry claims it as a class.
* Masks are colour or palette PNGs (OpenCV reads a palette PNG as its
  colours). A colour that is in no entry is an error naming the file, the
  pixel and the colour, never silently void. A single-channel 8-bit mask
  holds entry indices, as CVAT imports one (255 is void).

Plain layout, for id images::

    <root>/classes.yaml
    <root>/images/<split>/**/<stem>.png (.jpg, .jpeg)
    <root>/labels/<split>/**/<stem>.png         single-channel 8-bit class ids

``classes.yaml``::

    name: my_robot          # optional; the model's dataset name (default: folder name)
    classes:                # ids 0..C-1: list position, or an explicit id per class
      - {name: road, color: [128, 64, 128]}
      - {name: grass, color: [0, 200, 0], id: 1}
    void_id: 255            # optional (default 255); null: every pixel is a class
    drivable: [road]        # optional (default none): the node's default drivable classes

Checks made when a split is listed, before any training (:func:`list_pairs`):
an image without its label or a label without its image, an empty split,
an image and label of different sizes, a label PNG with an alpha channel or
16 bits, and in ``classes.yaml`` duplicate names or ids, ids past 254, a
void id among the classes and a drivable class that is not a class. Each is
a :class:`DatasetError` naming the file and the problem. The sizes come from
the file headers (PNG IHDR, JPEG SOF), so listing reads no pixels.

Why one module: one job, a dataset folder to its checked class table and
(image, label) pairs, for the two layouts; the header reading (PNG IHDR, JPEG
SOF) serves only those checks, and training and the bag tools must see the
same classes and the same refusals.
"""

from dataclasses import dataclass, field
import hashlib
import json
from pathlib import Path
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .labels import ClassTable, Color

LAYOUTS = ('voc', 'plain')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
VOID_ID = 255
VOC_VOID_COLOR: Color = (224, 224, 192)
VOID_NAMES = ('void', 'ignore', 'ignored')
#: Default drivable classes of a VOC label map: entries with one of these names (any case).
DRIVABLE_NAMES = ('road', 'drivable')
LABELMAP = 'labelmap.txt'
CLASSES_YAML = 'classes.yaml'
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
Pair = Tuple[Path, Path]


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent (one line, naming the file)."""


def voc_color(index: int) -> Color:
    """Return Pascal VOC's palette colour of ``index`` (0: black, 255: 224,224,192)."""
    rgb = [0, 0, 0]
    for bit in range(8):
        for channel in range(3):
            rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return tuple(rgb)


# ---------------------------------------------------------------------------------------------
# File headers: sizes and PNG formats without decoding pixels


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: size, and for PNG the bit depth, colour type and tRNS."""

    width: int
    height: int
    kind: str  # 'png', 'jpeg' or 'other' (decoded to learn the size)
    bit_depth: int = 8
    color_type: int = 2  # PNG colour type: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
    transparency: bool = False  # a tRNS chunk (palette or colour-key transparency)

    @property
    def alpha(self) -> bool:
        """Whether OpenCV would read a fourth (alpha) channel."""
        return self.color_type in (4, 6) or self.transparency

    def describe(self) -> str:
        """Return e.g. ``8-bit RGB PNG``."""
        if self.kind != 'png':
            return self.kind
        names = {0: 'greyscale', 2: 'RGB', 3: 'palette', 4: 'greyscale+alpha', 6: 'RGBA'}
        return f'{self.bit_depth}-bit {names.get(self.color_type, "unknown")} PNG'


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_header(stream, path: Path) -> ImageHeader:
    length, kind = struct.unpack('>I4s', stream.read(8))
    if kind != b'IHDR' or length != 13:
        raise DatasetError(f"'{path}': corrupt PNG (no IHDR chunk first)")
    width, height, depth, color_type = struct.unpack('>IIBB', stream.read(10))
    stream.seek(length - 10 + 4, 1)  # rest of IHDR, CRC
    transparency = False
    while True:  # chunks before the first IDAT: PLTE, tRNS, text...
        head = stream.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack('>I4s', head)
        if kind in (b'IDAT', b'IEND'):
            break
        transparency = transparency or kind == b'tRNS'
        stream.seek(length + 4, 1)
    return ImageHeader(width, height, 'png', depth, color_type, transparency)


def _jpeg_header(stream, path: Path) -> ImageHeader:
    while True:
        byte = stream.read(1)
        while byte and byte != b'\xff':
            byte = stream.read(1)
        while byte == b'\xff':  # fill bytes
            byte = stream.read(1)
        if not byte:
            raise DatasetError(f"'{path}': corrupt JPEG (no frame header)")
        marker = byte[0]
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue  # markers without a length
        if marker in (0xD9, 0xDA):
            raise DatasetError(f"'{path}': corrupt JPEG (no frame header before the scan)")
        (length,) = struct.unpack('>H', stream.read(2))
        if marker in _JPEG_SOF:
            _, height, width = struct.unpack('>BHH', stream.read(5))
            return ImageHeader(width, height, 'jpeg')
        stream.seek(length - 2, 1)


def read_header(path: Path) -> ImageHeader:
    """Read the size (and PNG format) of an image file from its header; DatasetError if bad."""
    try:
        with open(path, 'rb') as stream:
            signature = stream.read(8)
            if signature == _PNG_SIGNATURE:
                return _png_header(stream, path)
            if signature[:2] == b'\xff\xd8':
                stream.seek(2)
                return _jpeg_header(stream, path)
    except OSError as error:
        raise DatasetError(f"cannot read '{path}' ({error.strerror})") from None
    except struct.error:
        raise DatasetError(f"'{path}' is truncated (its header is cut short)") from None
    import cv2  # another format OpenCV may know: decode it once

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"cannot read image '{path}' (not an image OpenCV reads)")
    return ImageHeader(image.shape[1], image.shape[0], 'other')


# ---------------------------------------------------------------------------------------------
# Layouts


@dataclass(frozen=True)
class LabelMapEntry:
    """One ``labelmap.txt`` line: name, colour, and the class id it maps to (void: 255)."""

    name: str
    color: Color
    class_id: int


@dataclass(frozen=True)
class Layout:
    """
    A dataset of your own: where its files are, its class table, how its labels decode.

    ``kind`` is ``'voc'`` or ``'plain'``; ``source`` the file that defines the
    classes (``labelmap.txt``, ``classes.yaml``, or the root for VOC's default
    classes); ``entries`` the VOC label map (empty for the plain layout).
    """

    kind: str
    root: Path
    table: ClassTable
    source: Path
    entries: Tuple[LabelMapEntry, ...] = ()
    _codes: np.ndarray = field(default=None, repr=False, compare=False)
    _code_ids: np.ndarray = field(default=None, repr=False, compare=False)
    _index_ids: np.ndarray = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """One line: layout, root, classes, void."""
        return (f"{self.kind} layout '{self.root}': {self.table.num_classes} classes "
                f"({', '.join(self.table.names)}), void id {self.table.void_id}, drivable "
                f"{list(self.table.drivable)} (from '{self.source}')")

    def splits(self) -> List[str]:
        """Return the split names the layout holds."""
        if self.kind == 'voc':
            return sorted(p.stem for p in (self.root / 'ImageSets' / 'Segmentation').glob('*.txt'))
        return sorted(p.name for p in (self.root / 'images').iterdir() if p.is_dir()) \
            if (self.root / 'images').is_dir() else []

    def cache_key(self) -> str:
        """Return a text that changes whenever the mapping from label files to ids changes."""
        entries = [(e.name, e.color, e.class_id) for e in self.entries]
        return json.dumps([self.kind, list(self.table.names), self.table.void_id, entries])

    def decode_label(self, path: Path) -> np.ndarray:
        """
        Read a label file as HxW uint8 class ids (void: the table's void id).

        Raise :class:`DatasetError` naming the file for a colour (VOC) or id
        (plain) that is no class, with the first such pixel and the count.
        """
        import cv2

        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"cannot read label '{path}' (missing, unreadable or not an "
                               'image)')
        if raw.dtype != np.uint8:
            raise DatasetError(f"label '{path}' has {raw.dtype} pixels: expected 8 bits")
        if raw.ndim == 3 and raw.shape[2] == 4:
            raise DatasetError(f"label '{path}' has an alpha channel: save it without one")
        if self.kind == 'plain':
            return self._plain_ids(raw, path)
        if raw.ndim == 2:
            return self._index_labels(raw, path)
        return self._color_labels(raw, path)

    def _plain_ids(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim != 2:
            raise DatasetError(f"label '{path}' has {raw.shape[2]} channels: the plain layout "
                               'wants single-channel 8-bit class ids (colour masks: use the '
                               'VOC layout)')
        allowed = np.zeros(256, dtype=bool)
        allowed[:self.table.num_classes] = True
        if self.table.void_id is not None:
            allowed[self.table.void_id] = True
        bad = ~allowed[raw]
        if bad.any():
            row, col = np.argwhere(bad)[0]
            values = np.unique(raw[bad])
            raise DatasetError(
                f"label '{path}': pixel (x={col}, y={row}) has id {raw[row, col]}, which is no "
                f'class of {self.source.name} (ids 0-{self.table.num_classes - 1}, void '
                f'{self.table.void_id}); {int(bad.sum())} such pixels, ids '
                f'{values[:10].tolist()}')
        return raw

    def _index_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        ids = self._index_ids[raw]
        bad = ids == 256
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DatasetError(
                f"label '{path}': pixel (x={col}, y={row}) has index {raw[row, col]}, which is "
                f'no entry of {self.source.name} (entries 0-{len(self.entries) - 1}, void 255); '
                f'{int(bad.sum())} such pixels')
        return ids.astype(np.uint8)

    def _color_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        bgr = raw.astype(np.int32)
        codes = (bgr[..., 2] << 16) | (bgr[..., 1] << 8) | bgr[..., 0]
        position = np.searchsorted(self._codes, codes).clip(max=len(self._codes) - 1)
        known = self._codes[position] == codes
        if not known.all():
            row, col = np.argwhere(~known)[0]
            color = tuple(int(v) for v in raw[row, col, ::-1])
            colors = ', '.join(f'{e.name} {e.color}' for e in self.entries)
            raise DatasetError(
                f"label '{path}': pixel (x={col}, y={row}) has colour {color}, which is in no "
                f'entry of {self.source.name} ({int((~known).sum())} pixels of unknown colours; '
                f'known: {colors})')
        return self._code_ids[position].astype(np.uint8)


def _color_tables(entries: Sequence[LabelMapEntry], void_color: bool
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted colour codes with their class ids, and the entry-index lookup table."""
    mapping = {(r << 16) | (g << 8) | b: e.class_id for e in entries for r, g, b in [e.color]}
    if void_color:
        r, g, b = VOC_VOID_COLOR
        mapping[(r << 16) | (g << 8) | b] = VOID_ID
    codes = np.array(sorted(mapping), dtype=np.int32)
    code_ids = np.array([mapping[c] for c in codes.tolist()], dtype=np.int32)
    index_ids = np.full(256, 256, dtype=np.int32)  # 256: no entry
    for index, entry in enumerate(entries):
        index_ids[index] = entry.class_id
    index_ids[VOID_ID] = VOID_ID
    return codes, code_ids, index_ids


def parse_color(text: str, where: str) -> Color:
    """Parse ``r,g,b`` (0-255 each); raise DatasetError naming ``where``."""
    parts = [p.strip() for p in text.split(',')]
    try:
        color = tuple(int(p) for p in parts)
    except ValueError:
        color = ()
    if len(color) != 3 or not all(0 <= v <= 255 for v in color):
        raise DatasetError(f"{where}: colour '{text}' is not r,g,b with values 0-255")
    return color


def parse_labelmap(path: Path) -> List[Tuple[str, Optional[Color]]]:
    """Return the (name, colour or None) entries of a ``labelmap.txt``, in order."""
    try:
        lines = Path(path).read_text(encoding='utf-8').splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read label map '{path}' ({error})") from None
    entries: List[Tuple[str, Optional[Color]]] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.split(':')
        where = f"label map '{path}' line {number}"
        if len(fields) != 4:
            raise DatasetError(f"{where}: '{line}' is not name:r,g,b:parts:actions "
                               f'(4 fields separated by ":", got {len(fields)})')
        name = fields[0].strip()
        if not name:
            raise DatasetError(f'{where}: the label has no name')
        if any(name == other for other, _ in entries):
            raise DatasetError(f"{where}: label '{name}' is defined twice")
        entries.append((name, parse_color(fields[1], where) if fields[1].strip() else None))
    if not entries:
        raise DatasetError(f"label map '{path}' defines no labels")
    return entries


def load_voc_layout(root: Path, void_labels: Sequence[str] = (),
                    drivable: Optional[Sequence[str]] = None) -> Layout:
    """
    Read a VOC / CVAT layout's label map (see the module docstring); list nothing yet.

    ``void_labels``: label map entries to treat as void besides ``void``,
    ``ignore`` and ``ignored``; ``drivable``: the default drivable classes
    (None: the classes named ``road`` or ``drivable``, any case).
    """
    root = Path(root)
    source = root / LABELMAP
    if source.is_file():
        raw_entries = parse_labelmap(source)
    else:
        if not (root / 'ImageSets' / 'Segmentation').is_dir():
            raise DatasetError(f"'{root}' is no VOC / CVAT layout: neither '{LABELMAP}' nor "
                               "'ImageSets/Segmentation/' is there")
        source = root
        raw_entries = [(name, voc_color(i)) for i, name in enumerate(VOC_CLASSES)]
    where = f"label map '{source}'"
    names = [name for name, _ in raw_entries]
    unknown = [name for name in void_labels if name not in names]
    if unknown:
        raise DatasetError(f'void label(s) {unknown} are not in {where} (entries: {names})')
    void = {name for name in names if name.lower() in VOID_NAMES} | set(void_labels)
    colors: Dict[Color, str] = {}
    entries, class_names, class_colors = [], [], []
    for index, (name, color) in enumerate(raw_entries):
        color = color if color is not None else voc_color(index)
        if color in colors:
            raise DatasetError(f"{where}: labels '{colors[color]}' and '{name}' have the same "
                               f'colour {color}')
        colors[color] = name
        if name in void:
            entries.append(LabelMapEntry(name, color, VOID_ID))
        else:
            entries.append(LabelMapEntry(name, color, len(class_names)))
            class_names.append(name)
            class_colors.append(color)
    if not class_names:
        raise DatasetError(f'{where}: every label is void; at least one class is needed')
    if len(class_names) > VOID_ID:
        raise DatasetError(f'{where}: {len(class_names)} classes; at most 255 fit 8-bit ids')
    if drivable is None:
        drivable = [n for n in class_names if n.lower() in DRIVABLE_NAMES]
    bad = [name for name in drivable if name not in class_names]
    if bad:
        raise DatasetError(f'drivable class(es) {bad} are not classes of {where} '
                           f'(classes: {class_names})')
    table = ClassTable(root.resolve().name or 'voc', tuple(class_names), tuple(class_colors),
                       VOID_ID, tuple(drivable))
    void_color = VOC_VOID_COLOR not in colors
    codes, code_ids, index_ids = _color_tables(entries, void_color)
    return Layout('voc', root, table, source, tuple(entries), codes, code_ids, index_ids)


def _yaml_error(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"class table '{path}': {problem}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_plain_layout(root: Path, drivable: Optional[Sequence[str]] = None) -> Layout:
    """Read a plain layout's ``classes.yaml`` (see the module docstring); list nothing yet."""
    import yaml

    root = Path(root)
    path = root / CLASSES_YAML
    if not path.is_file():
        raise DatasetError(f"'{root}' is no plain layout: '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise _yaml_error(path, f'cannot be read as YAML ({error})'.replace('\n', ' ')) \
            from None
    if not isinstance(data, dict):
        raise _yaml_error(path, 'must be a mapping with a classes list')
    unknown = sorted(set(data) - {'name', 'classes', 'void_id', 'drivable'})
    if unknown:
        raise _yaml_error(path, f'unknown keys {unknown} (known: name, classes, void_id, '
                                'drivable)')
    classes = data.get('classes')
    if not isinstance(classes, list) or not classes:
        raise _yaml_error(path, "'classes' must be a non-empty list of {name, color} entries")
    parsed = []
    for position, entry in enumerate(classes):
        if not isinstance(entry, dict) or not isinstance(entry.get('name'), str) \
                or not entry['name'].strip():
            raise _yaml_error(path, f'class {position}: expected {{name: ..., color: [r, g, '
                                    f'b]}}, got {entry!r}')
        extra = sorted(set(entry) - {'name', 'color', 'id'})
        if extra:
            raise _yaml_error(path, f"class '{entry['name']}': unknown keys {extra}")
        class_id = entry.get('id', position)
        if not _is_int(class_id) or class_id < 0:
            raise _yaml_error(path, f"class '{entry['name']}': id {class_id!r} is not an "
                                    'integer 0-254')
        if class_id > 254:
            raise _yaml_error(path, f"class '{entry['name']}': id {class_id} is past 254 "
                                    '(label images are 8-bit and 255 is kept for void)')
        color = entry.get('color')
        if color is None:
            color = voc_color(class_id)
        elif not (isinstance(color, list) and len(color) == 3
                  and all(_is_int(v) and 0 <= v <= 255 for v in color)):
            raise _yaml_error(path, f"class '{entry['name']}': color {color!r} is not "
                                    '[r, g, b] with integers 0-255')
        parsed.append((class_id, entry['name'].strip(), tuple(color)))
    names = [name for _, name, _ in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise _yaml_error(path, f'duplicate class names {duplicates}')
    ids = [class_id for class_id, _, _ in parsed]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise _yaml_error(path, f'duplicate class ids {twice}')
    missing = sorted(set(range(len(ids))) - set(ids))
    if missing:
        raise _yaml_error(path, f'class ids must be 0-{len(ids) - 1} without gaps (the network '
                                f'predicts ids 0..C-1); missing {missing}')
    parsed.sort()
    void_id = data.get('void_id', VOID_ID)
    if void_id is not None and (not _is_int(void_id) or not len(ids) <= void_id <= 255):
        raise _yaml_error(path, f'void_id {void_id!r} must be null or an id in '
                                f'[{len(ids)}, 255] (outside the class ids)')
    if drivable is None:
        drivable = data.get('drivable') or []
    if not isinstance(drivable, (list, tuple)) or not all(isinstance(n, str) for n in drivable):
        raise _yaml_error(path, f'drivable must be a list of class names, got {drivable!r}')
    bad = [name for name in drivable if name not in names]
    if bad:
        raise _yaml_error(path, f'drivable class(es) {bad} are not classes (classes: '
                                f'{[name for _, name, _ in parsed]})')
    name = data.get('name', root.resolve().name or 'plain')
    if not isinstance(name, str) or not name.strip():
        raise _yaml_error(path, f'name {name!r} must be a non-empty string')
    table = ClassTable(name.strip(), tuple(n for _, n, _ in parsed),
                       tuple(c for _, _, c in parsed), void_id, tuple(drivable))
    return Layout('plain', root, table, path)


def detect_layout(root: Path) -> Optional[str]:
    """Return ``'voc'`` or ``'plain'`` from what ``root`` holds, or None."""
    root = Path(root)
    if (root / CLASSES_YAML).is_file():
        return 'plain'
    if (root / LABELMAP).is_file() or (root / 'ImageSets' / 'Segmentation').is_dir():
        return 'voc'
    return None


def load_layout(kind: str, root: Path, void_labels: Sequence[str] = (),
                drivable: Optional[Sequence[str]] = None) -> Layout:
    """Read the ``kind`` layout (``'voc'``, ``'plain'`` or ``'auto'``) at ``root``."""
    if kind == 'auto':
        kind = detect_layout(root) or ''
        if not kind:
            raise DatasetError(f"'{root}' holds neither '{LABELMAP}' / 'ImageSets/Segmentation/' "
                               f"(VOC / CVAT layout) nor '{CLASSES_YAML}' (plain layout)")
    if kind == 'voc':
        return load_voc_layout(root, void_labels, drivable)
    if kind == 'plain':
        if void_labels:
            raise DatasetError(f'void labels {list(void_labels)}: the plain layout takes its '
                               f'void id from {CLASSES_YAML}')
        return load_plain_layout(root, drivable)
    raise DatasetError(f"unknown layout '{kind}' (voc or plain)")


# ---------------------------------------------------------------------------------------------
# Listing a split, with the checks that need no pixels


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> Dict[str, Path]:
    """Map each file's path below ``folder`` without suffix to the file; refuse a stem twice."""
    files: Dict[str, Path] = {}
    for path in sorted(folder.rglob('*')):
        if path.is_file() and path.suffix.lower() in suffixes:
            stem = path.relative_to(folder).with_suffix('').as_posix()
            if stem in files:
                raise DatasetError(f"{what} '{files[stem]}' and '{path}' have the same name: "
                                   'which one is meant?')
            files[stem] = path
    return files


def _voc_pairs(layout: Layout, split: str) -> List[Pair]:
    root = layout.root
    sets = root / 'ImageSets' / 'Segmentation'
    listing = sets / f'{split}.txt'
    if not listing.is_file():
        found = ', '.join(layout.splits()) or 'none'
        raise DatasetError(f"split '{split}': '{listing}' does not exist (splits there: {found}; "
                           'CVAT writes default.txt for a task without subsets)')
    ids = [line.strip() for line in listing.read_text(encoding='utf-8').splitlines()
           if line.strip() and not line.strip().startswith('#')]
    if not ids:
        raise DatasetError(f"split '{split}' is empty: '{listing}' lists no frames")
    image_dir, label_dir = root / 'JPEGImages', root / 'SegmentationClass'
    if not label_dir.is_dir():
        raise DatasetError(f"folder '{label_dir}' does not exist (the class masks)")
    if not image_dir.is_dir():
        raise DatasetError(f"folder '{image_dir}' does not exist (the frames; CVAT writes it "
                           "only when the export's 'Save images' box is ticked)")
    images = _files_by_stem(image_dir, IMAGE_SUFFIXES, 'image')
    pairs = []
    for item in ids:
        image = images.get(item)
        label = label_dir / f'{item}.png'
        if image is None and not label.is_file():
            raise DatasetError(f"'{listing}' lists '{item}', which has neither an image in "
                               f"'{image_dir}' nor a label '{label}'")
        if image is None:
            raise DatasetError(f"label '{label}' has no image '{image_dir / item}.jpg' (or "
                               f'.jpeg, .png)')
        if not label.is_file():
            raise DatasetError(f"image '{image}' has no label '{label}'")
        pairs.append((image, label))
    return pairs


def _plain_pairs(layout: Layout, split: str) -> List[Pair]:
    root = layout.root
    image_dir, label_dir = root / 'images' / split, root / 'labels' / split
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            found = ', '.join(layout.splits()) or 'none'
            raise DatasetError(f"split '{split}': folder '{folder}' does not exist (splits in "
                               f'images/: {found})')
    images = _files_by_stem(image_dir, IMAGE_SUFFIXES, 'image')
    labels = _files_by_stem(label_dir, ('.png',), 'label')
    for stem, image in images.items():
        if stem not in labels:
            raise DatasetError(f"image '{image}' has no label '{label_dir / stem}.png'")
    for stem, label in labels.items():
        if stem not in images:
            raise DatasetError(f"label '{label}' has no image '{image_dir / stem}' (.png, .jpg "
                               'or .jpeg)')
    if not images:
        raise DatasetError(f"split '{split}' is empty: no images in '{image_dir}'")
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def check_label_header(layout: Layout, label: Path, header: ImageHeader) -> None:
    """Refuse a label file that is not an 8-bit PNG without alpha of the layout's kind."""
    if header.kind != 'png':
        raise DatasetError(f"label '{label}' is {header.describe()}, not a PNG: labels must be "
                           'lossless PNG')
    if header.bit_depth == 16:
        raise DatasetError(f"label '{label}' is a 16-bit PNG: save it with 8 bits per channel")
    if header.alpha:
        raise DatasetError(f"label '{label}' has an alpha channel ({header.describe()}"
                           f"{' with transparency' if header.transparency else ''}): save it "
                           'without one')
    if layout.kind == 'plain' and header.color_type != 0:
        raise DatasetError(f"label '{label}' ({header.describe()}): the plain layout wants "
                           'single-channel 8-bit class ids (greyscale PNG; colour masks: use '
                           'the VOC layout)')
    if header.bit_depth != 8 and not (header.color_type == 3 and layout.kind == 'voc'):
        raise DatasetError(f"label '{label}' ({header.describe()}): expected 8 bits")


def list_pairs(layout: Layout, split: str) -> List[Pair]:
    """
    Return the split's (image, label) files after the checks that need no pixels.

    ``split`` may join several with '+' (``train+val``). Raises
    :class:`DatasetError` for a missing counterpart, an empty split, a label
    PNG that is not 8-bit, has alpha or (plain) is not single-channel, and an
    image and label of different sizes.
    """
    pairs: List[Pair] = []
    for part in split.split('+'):
        listed = _voc_pairs(layout, part) if layout.kind == 'voc' else _plain_pairs(layout, part)
        for image, label in listed:
            label_header = read_header(label)
            check_label_header(layout, label, label_header)
            image_header = read_header(image)
            if (image_header.width, image_header.height) != \
                    (label_header.width, label_header.height):
                raise DatasetError(
                    f"image '{image}' is {image_header.width}x{image_header.height} but label "
                    f"'{label}' is {label_header.width}x{label_header.height}")
        pairs += listed
    return pairs


def fingerprint(root: Path, key: str, splits: Dict[str, Sequence[Pair]]) -> str:
    """
    Return a sha256 of what a run trains and validates on.

    Over ``key`` (the class table and how label files map to it) and, per
    split, each image and label file's path below ``root`` and size in bytes
    (not the pixels: cheap for large datasets; an edit that keeps every
    file's size is missed).
    """
    digest = hashlib.sha256(key.encode())
    for split in sorted(splits):
        for image, label in splits[split]:
            for path in (image, label):
                try:
                    relative = Path(path).relative_to(root).as_posix()
                except ValueError:
                    relative = str(path)
                digest.update(f'{split}\t{relative}\t{Path(path).stat().st_size}\n'.encode())
    return digest.hexdigest()
