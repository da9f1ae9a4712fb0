"""The model file: round trip, and a clear ModelFileError for every kind of bad file."""

from dataclasses import asdict, replace
import json
import os
from pathlib import Path
import pickle
from typing import Any, Dict

from enet_ros.labels import CAMVID_11, CITYSCAPES_19
from enet_ros.model import ENet
from enet_ros.model_file import (FORMAT_VERSION, load_model_file, METADATA_KEY, ModelFileError,
                                 ModelMetadata, save_model_file)
from model_files import write_random_model
import pytest
from safetensors.torch import load_file, save_file
import torch


@pytest.fixture(scope='module')
def good_file(tmp_path_factory) -> Path:
    """Write a valid CamVid model file (64x48 input)."""
    return write_random_model(tmp_path_factory.mktemp('good') / 'good.safetensors',
                              input_size=(64, 48))


@pytest.fixture(scope='module')
def good_tensors(good_file: Path) -> Dict[str, torch.Tensor]:
    """Return the tensors of ``good_file``."""
    return load_file(str(good_file))


def _metadata_dict(**changes: Any) -> Dict[str, Any]:
    data = asdict(ModelMetadata.from_class_table(CAMVID_11, (64, 48)))
    data.update(changes)
    return data


def _write(path: Path, tensors: Dict[str, torch.Tensor], metadata: Any = None) -> Path:
    """Write a safetensors file bypassing save_model_file's checks."""
    header = None
    if metadata is not None:
        header = {METADATA_KEY: metadata if isinstance(metadata, str) else json.dumps(metadata)}
    save_file(tensors, str(path), metadata=header)
    return path


def _expect_error(path: Path, *fragments: str) -> ModelFileError:
    with pytest.raises(ModelFileError) as caught:
        load_model_file(path)
    message = str(caught.value)
    assert str(path) in message, message
    assert caught.value.path == str(path)
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


def test_round_trip(tmp_path: Path):
    """Metadata and weights read back equal to what was saved."""
    torch.manual_seed(3)
    model = ENet(CITYSCAPES_19.num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.num_batches_tracked.fill_(7)
    metadata = ModelMetadata.from_class_table(
        CITYSCAPES_19, (1024, 512), val_miou=0.5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
        training={'epoch': 3, 'args': {'lr': 5e-4}})
    path = save_model_file(tmp_path / 'sub' / 'model.safetensors', model, metadata)
    assert path == tmp_path / 'sub' / 'model.safetensors'
    assert [p.name for p in path.parent.iterdir()] == ['model.safetensors']  # no temp file
    loaded = load_model_file(path)
    assert loaded.path == str(path)
    assert loaded.metadata == metadata
    assert loaded.metadata.training == {'epoch': 3, 'args': {'lr': 5e-4}}
    assert loaded.metadata.class_table == CITYSCAPES_19
    assert loaded.metadata.format_version == FORMAT_VERSION
    state = model.state_dict()
    assert set(loaded.state_dict) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded.state_dict[name], tensor), name
    rebuilt = loaded.build()
    assert not rebuilt.training
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0)


def test_save_state_dict_and_path_string(tmp_path: Path):
    """save_model_file also takes a state_dict and a str path, and stores fp32."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in ENet(11).state_dict().items()}
    metadata = ModelMetadata.from_class_table(CAMVID_11, (480, 360))
    save_model_file(str(tmp_path / 'm.safetensors'), state, metadata)
    loaded = load_model_file(str(tmp_path / 'm.safetensors'))
    assert loaded.state_dict['fullconv.weight'].dtype == torch.float32
    assert loaded.state_dict['initial.bn.num_batches_tracked'].dtype == torch.int64


def test_saved_file_mode_follows_the_umask(tmp_path: Path):
    """The model file gets the mode any new file gets (not a temp file's 0600); no temp left."""
    plain = tmp_path / 'plain.bin'
    plain.write_bytes(b'')
    path = save_model_file(tmp_path / 'm.safetensors', ENet(11),
                           ModelMetadata.from_class_table(CAMVID_11, (480, 360)))
    assert os.stat(path).st_mode == os.stat(plain).st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.safetensors', 'plain.bin']


def test_save_refuses_mismatched_weights(tmp_path: Path):
    """Saving 19-class weights with 11-class metadata fails and writes nothing."""
    metadata = ModelMetadata.from_class_table(CAMVID_11, (480, 360))
    with pytest.raises(ModelFileError, match='wrong shape'):
        save_model_file(tmp_path / 'bad.safetensors', ENet(19), metadata)
    assert list(tmp_path.iterdir()) == []


def test_missing_path(tmp_path: Path):
    """A path that does not exist."""
    _expect_error(tmp_path / 'nope.safetensors', 'does not exist')


def test_directory(tmp_path: Path):
    """A directory is not a model file."""
    _expect_error(tmp_path, 'not a regular file')


def test_empty_file(tmp_path: Path):
    """An empty file."""
    path = tmp_path / 'empty.safetensors'
    path.touch()
    _expect_error(path, 'empty')


def test_truncated_file(tmp_path: Path, good_file: Path):
    """A real model file cut in half."""
    data = good_file.read_bytes()
    path = tmp_path / 'half.safetensors'
    path.write_bytes(data[:len(data) // 2])
    _expect_error(path, 'truncated or corrupt')


def test_few_bytes(tmp_path: Path):
    """A file shorter than the safetensors header length field."""
    path = tmp_path / 'short.safetensors'
    path.write_bytes(b'\x01\x02\x03')
    _expect_error(path, 'truncated')


def test_random_bytes(tmp_path: Path):
    """Random bytes are not a safetensors file."""
    path = tmp_path / 'random.safetensors'
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8,
                                         generator=torch.Generator().manual_seed(1)).tolist()))
    _expect_error(path, 'not a valid safetensors file')


class _Payload:
    """Pickles to a call of ``os.mkdir(marker)``: unpickling it runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        """Ask the unpickler to call os.mkdir."""
        return os.mkdir, (self.marker,)


def test_payload_really_runs_when_unpickled(tmp_path: Path):
    """The payload the next test uses does execute code when unpickled (so that test counts)."""
    marker = tmp_path / 'ran'
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.is_dir()


@pytest.mark.parametrize('writer', ['torch.save', 'pickle-2', 'pickle-0'])
def test_pickle_refused_without_running_it(tmp_path: Path, writer: str):
    """A pickle (torch.save or plain) is refused and its code never runs."""
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'model.pth'
    payload = {'state_dict': _Payload(marker)}
    if writer == 'torch.save':
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(writer[-1])))
    error = _expect_error(path)
    if writer != 'pickle-0':  # protocol 0 has no signature; it fails as a corrupt file
        assert 'pickle' in error.problem
    assert not marker.exists()


@pytest.mark.slow
def test_header_length_that_looks_like_a_pickle_loads(tmp_path: Path, good_tensors):
    """A good file whose header length starts with byte 0x80 (a pickle's first byte) loads."""
    path = tmp_path / 'x80.safetensors'
    for pad in range(300):
        _write(path, good_tensors, _metadata_dict(training={'note': 'x' * pad}))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_model_file(path).metadata.training['note'] == 'x' * pad


def test_no_metadata_key(tmp_path: Path, good_tensors):
    """A safetensors file without the enet_ros metadata."""
    path = _write(tmp_path / 'plain.safetensors', good_tensors)
    _expect_error(path, f"no '{METADATA_KEY}' metadata")


def test_bad_metadata_json(tmp_path: Path, good_tensors):
    """Metadata that is not JSON, or not a JSON object."""
    path = _write(tmp_path / 'json.safetensors', good_tensors, '{"class_names": [')
    _expect_error(path, 'bad metadata', 'not valid JSON')
    path = _write(tmp_path / 'list.safetensors', good_tensors, '[1, 2]')
    _expect_error(path, 'not a JSON object')


@pytest.mark.parametrize('version', [FORMAT_VERSION + 1, 0, None, '1'])
def test_unsupported_format_version(tmp_path: Path, good_tensors, version):
    """A format_version this code does not read."""
    path = _write(tmp_path / 'v.safetensors', good_tensors, _metadata_dict(format_version=version))
    _expect_error(path, 'unsupported format_version')


def test_missing_and_unknown_metadata_keys(tmp_path: Path, good_tensors):
    """Required keys missing, or keys this version does not know."""
    data = _metadata_dict()
    del data['input_size']
    _expect_error(_write(tmp_path / 'a.safetensors', good_tensors, data), 'lacks', 'input_size')
    _expect_error(_write(tmp_path / 'b.safetensors', good_tensors, _metadata_dict(extra=1)),
                  'unknown metadata keys', 'extra')


def test_wrong_value_type(tmp_path: Path, good_tensors):
    """A metadata value of the wrong type is a ModelFileError, not a TypeError."""
    path = _write(tmp_path / 't.safetensors', good_tensors, _metadata_dict(colors=5))
    _expect_error(path, 'bad metadata')


def test_wrong_tensor_names(tmp_path: Path, good_tensors):
    """Weights with renamed and missing tensors."""
    tensors = dict(good_tensors)
    tensors['fullconv.kernel'] = tensors.pop('fullconv.weight')
    path = _write(tmp_path / 'names.safetensors', tensors, _metadata_dict())
    _expect_error(path, 'weights do not match ENet', 'missing', 'fullconv.weight',
                  'unexpected', 'fullconv.kernel')


def test_wrong_shapes(tmp_path: Path):
    """Weights for 19 classes with metadata for 11."""
    tensors = {k: v.contiguous() for k, v in ENet(19).state_dict().items()}
    path = _write(tmp_path / 'shapes.safetensors', tensors, _metadata_dict())
    _expect_error(path, 'wrong shape', '11 classes', 'fullconv.weight')


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_weights(tmp_path: Path, good_tensors, value: float):
    """Refuse NaN or infinite weights."""
    tensors = dict(good_tensors)
    tensors['regular1_1.branch.0.weight'] = tensors['regular1_1.branch.0.weight'].clone()
    tensors['regular1_1.branch.0.weight'][0, 0, 0, 0] = value
    path = _write(tmp_path / 'nan.safetensors', tensors, _metadata_dict())
    _expect_error(path, 'NaN or infinity', 'regular1_1.branch.0.weight')


@pytest.mark.parametrize('changes, fragment', [
    ({'drivable_classes': ['Road', 'Runway']}, "drivable_classes ['Runway']"),
    ({'void_id': 3}, 'void_id 3'),
    ({'void_id': 256}, 'void_id 256'),
    ({'input_size': [60, 48]}, 'input_size [60, 48]'),
    ({'input_size': [64]}, 'input_size'),
    ({'class_names': ['Sky'] * 11}, 'duplicates'),
    ({'colors': [[0, 0, 0]] * 10}, 'colors'),
    ({'colors': [[0, 0, 256]] * 11}, 'colors'),
    ({'std': [0.2, 0.0, 0.2]}, 'std must be positive'),
    ({'mean': [0.5, 0.5]}, 'mean must be three finite numbers'),
    ({'mean': [0.5, float('nan'), 0.5]}, 'mean must be three finite numbers'),
    ({'std': [0.2, float('inf'), 0.2]}, 'std must be three finite numbers'),
    ({'std': [0.2, True, 0.2]}, 'std must be three finite numbers'),
    ({'val_miou': 1.5}, 'val_miou'),
    ({'architecture': 'segnet'}, 'architecture'),
])
def test_inconsistent_metadata(tmp_path: Path, good_tensors, changes, fragment):
    """Metadata that contradicts itself is refused with the reason."""
    path = _write(tmp_path / 'meta.safetensors', good_tensors, _metadata_dict(**changes))
    _expect_error(path, 'bad metadata', fragment)


def test_metadata_validated_on_construction():
    """Refuse inconsistent values in ModelMetadata itself."""
    good = ModelMetadata.from_class_table(CAMVID_11, (480, 360))
    assert good.void_id == 11 and good.num_classes == 11
    for changes in ({'void_id': 0}, {'drivable_classes': ('road',)}, {'input_size': (481, 360)}):
        with pytest.raises(ValueError):
            replace(good, **changes)


def test_metadata_json_round_trip():
    """to_json / from_json are inverse, void_id None included."""
    metadata = ModelMetadata.from_class_table(CAMVID_11, (480, 360), val_miou=0.55)
    assert ModelMetadata.from_json(metadata.to_json()) == metadata
    no_void = replace(metadata, void_id=None)
    assert ModelMetadata.from_json(no_void.to_json()).void_id is None


def test_seen_split_note_only_for_a_split_trained_on():
    """A model trained on val warns about val scores and names its train-only run's score."""
    plain = ModelMetadata.from_class_table(CAMVID_11, (480, 360), val_miou=0.55)
    assert plain.seen_split_note('val') is None
    seen = replace(plain, val_miou=None, training={'val_seen_in_training': ['val']})
    assert "trained on the 'val' split too" in seen.seen_split_note('val')
    assert 'scored' not in seen.seen_split_note('val')
    assert seen.seen_split_note('test') is None
    recorded = replace(seen, training={'val_seen_in_training': ['val'],
                                       'train_only_run': {'val_miou': 0.641586}})
    assert "scored 64.16 mIoU on 'val'" in recorded.seen_split_note('val')


def test_deeply_nested_metadata_is_refused(tmp_path: Path, good_tensors):
    """200000 '[' (json.loads: RecursionError) or 40 levels in the training record: refused."""
    path = _write(tmp_path / 'deep.safetensors', good_tensors, '[' * 200000)
    _expect_error(path, 'bad metadata', 'nested too deeply')
    deep: Any = 'bottom'
    for _ in range(40):
        deep = {'down': deep}
    path = _write(tmp_path / 'deep2.safetensors', good_tensors, _metadata_dict(training=deep))
    _expect_error(path, 'bad metadata', 'training.down.down', 'more than 32 levels')
    digits = json.dumps(_metadata_dict()).replace('"void_id": 11', '"void_id": ' + '1' * 5000)
    path = _write(tmp_path / 'digits.safetensors', good_tensors, digits)
    _expect_error(path, 'bad metadata', 'not valid JSON')


@pytest.mark.parametrize('changes, fragment', [
    ({'dataset': ['camvid']}, 'dataset must be a string, not a list'),
    ({'colors': [[True, False, True]] * 11}, 'colors[0][0] must be an integer, not a boolean'),
    ({'colors': [[1.0, 2, 3]] * 11}, 'colors[0][0] must be an integer'),
    ({'training': {'val_seen_in_training': 5}},
     'training.val_seen_in_training must be a list of strings, not a number'),
    ({'training': {'val_seen_in_training': 'val'}},
     'training.val_seen_in_training must be a list of strings, not a string'),
    ({'training': {'train_only_run': [0.5]}}, 'training.train_only_run must be an object'),
    ({'training': {'train_only_run': {'val_miou': '64'}}},
     'training.train_only_run.val_miou must be a number or null'),
    ({'training': [['epoch', 3]]}, 'training must be an object or null, not a list'),
    ({'class_names': 'SkyBuildingPoleRoadPavementTreeSignSymbolFenceCarPedestrianBicy'},
     'class_names must be a list of strings, not a string'),
    ({'drivable_classes': {'Road': 1}}, 'drivable_classes must be a list of strings'),
    ({'input_size': [64.0, 48]}, 'input_size[0] must be an integer, not a number'),
    ({'input_size': [True, 48]}, 'input_size[0] must be an integer, not a boolean'),
    ({'void_id': True}, 'void_id must be an integer or null, not a boolean'),
    ({'val_miou': False}, 'val_miou must be a number or null, not a boolean'),
    ({'mean': 'imagenet'}, 'mean must be a list of 3 numbers, not a string'),
    ({'architecture': ['enet']}, 'architecture must be a string'),
    ({'format_version': True}, 'unsupported format_version True'),
])
def test_metadata_of_the_wrong_json_type_names_the_key(tmp_path: Path, good_tensors, changes,
                                                       fragment):
    """Each value outside the documented schema: one line naming the key, no TypeError."""
    path = _write(tmp_path / 'types.safetensors', good_tensors, _metadata_dict(**changes))
    error = _expect_error(path, 'bad metadata', fragment)
    assert '\n' not in str(error)


@pytest.mark.parametrize('name, fragment', [
    ('Sky\x00', "control character ('\\x00' at index 3)"),
    ('Sky\nline', 'control character'),
    ('Sky\x7f', 'control character'),
    ('Sky\ud800', 'unpaired surrogate'),
])
def test_control_characters_in_class_names_are_refused(tmp_path: Path, good_tensors, name,
                                                       fragment):
    """A NUL showed as '' in the node's class_names: names with control characters are refused."""
    names = [name] + list(CAMVID_11.names[1:])
    path = _write(tmp_path / 'names.safetensors', good_tensors,
                  _metadata_dict(class_names=names))
    _expect_error(path, 'bad metadata', 'class_names[0]', fragment)
    path = _write(tmp_path / 'dataset.safetensors', good_tensors, _metadata_dict(dataset=name))
    _expect_error(path, 'bad metadata', 'dataset', fragment)
    with pytest.raises(ValueError, match='control character|surrogate'):
        replace(ModelMetadata.from_class_table(CAMVID_11, (64, 48)), class_names=tuple(names))


@pytest.mark.parametrize('size, accepted', [
    ([40000, 40000], False), ([4096, 2160], False), ([8, 8192], False), ([8192, 8], False),
    ([3840, 2160], True), ([4096, 2024], True), ([2048, 1024], True),
])
def test_input_size_is_bounded(tmp_path: Path, good_tensors, size, accepted):
    """input_size [40000, 40000] built a 19 GB network: at most 4096 a side and 3840 x 2160."""
    path = _write(tmp_path / 'size.safetensors', good_tensors, _metadata_dict(input_size=size))
    if accepted:
        assert list(load_model_file(path).metadata.input_size) == size
    else:
        _expect_error(path, 'bad metadata', f'input_size {size} is too large')
