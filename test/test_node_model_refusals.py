"""
Refused models and sizes: one line and exit 2 at start-up, a refused set at run time.

Model metadata outside the documented schema (nested 200000 deep, values of
the wrong JSON type, control characters in names, an input size over the
limit), ``warmup_sizes`` and network sizes over the limits: the node, the bag
tools and ``enet-train evaluate`` refuse each with one line naming the field.
The sizes used here are the smallest over the limits, so that the code before
these checks (which built and warmed whatever it was given) ran them safely.
"""

from dataclasses import asdict
import json
from pathlib import Path
import subprocess
import time

from bag_helpers import make_image, make_labels
from enet_ros.evaluation import bag_io
from enet_ros.evaluation.evaluate_bag import main as evaluate_main
from enet_ros.labels import CAMVID_11
from enet_ros.model_file import METADATA_KEY, ModelMetadata
from model_files import write_random_model
import numpy as np
import pytest
from ros_harness import (get_parameter, make_image_msg, NodeProcess, RosPeer, set_parameters,
                         stamp_ns)
from safetensors.torch import load_file, save_file

TINY = {'network_width': 64, 'network_height': 48, 'torch_compile': False}


def _metadata(**changes) -> str:
    data = asdict(ModelMetadata.from_class_table(CAMVID_11, (64, 48)))
    data.update(changes)
    return json.dumps(data)


#: name -> (metadata JSON, a fragment of the one-line reason)
BAD_MODELS = {
    'nested': ('[' * 200000, 'nested too deeply'),
    'dataset_list': (_metadata(dataset=['camvid']), 'dataset must be a string, not a list'),
    'boolean_colours': (_metadata(colors=[[True, False, True]] * 11),
                        'colors[0][0] must be an integer, not a boolean'),
    'seen_5': (_metadata(training={'val_seen_in_training': 5}),
               'training.val_seen_in_training must be a list of strings'),
    'nul_name': (_metadata(class_names=['Sky\x00'] + list(CAMVID_11.names[1:])),
                 "class_names[0] 'Sky\\x00' has a control character"),
    'input_8192x8': (_metadata(input_size=[8192, 8]), 'input_size [8192, 8] is too large'),
}


@pytest.fixture(scope='module')
def bad_models(tmp_path_factory) -> dict:
    """Write each of BAD_MODELS with good weights; return name -> path."""
    folder = tmp_path_factory.mktemp('bad_models')
    tensors = load_file(str(write_random_model(folder / 'good.safetensors', input_size=(64, 48))))
    paths = {}
    for name, (text, _) in BAD_MODELS.items():
        paths[name] = folder / f'{name}.safetensors'
        save_file(tensors, str(paths[name]), metadata={METADATA_KEY: text})
    return paths


def _exit_code_and_log(env: dict, parameters: dict):
    """Start the node; return its exit code (None if it came up instead) and its log."""
    node = NodeProcess(env, parameters)
    try:
        code = node.wait_exit(90.0)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if node.exited() is None:
            node.stop()
    return code, node.log()


def _one_fatal_line(log: str, *fragments: str) -> None:
    assert 'Traceback' not in log, log
    lines = [line for line in log.splitlines() if 'cannot start' in line]
    assert len(lines) == 1, log
    for fragment in fragments:
        assert fragment in lines[0], log


@pytest.mark.integration
@pytest.mark.parametrize('name', sorted(BAD_MODELS))
def test_bad_model_at_start_up_exits_2_with_one_line(ros_env, bad_models, name):
    """Each bad model: exit 2 (respawn does not loop), one line naming model_path and the key."""
    code, log = _exit_code_and_log(ros_env, {'model_path': str(bad_models[name]), **TINY})
    assert code == 2, log
    _one_fatal_line(log, 'parameter model_path', str(bad_models[name]), BAD_MODELS[name][1])


@pytest.mark.parametrize('parameters, fragments', [
    ({'max_pixels': 10000, 'warmup_sizes': ['200x200']},
     ('parameter warmup_sizes', '200x200 has more pixels than max_pixels 10000')),
    ({'warmup_sizes': ['800x40']},
     ('parameter warmup_sizes', '800x40: one side is more than 16 times the other')),
    # The old code built and warmed this one up (about 2 GB); each side is within 4096.
    ({'network_width': 4096, 'network_height': 2032},
     ('parameters network_width and network_height', '4096x2032 is too large')),
])
@pytest.mark.integration
def test_sizes_over_the_limits_at_start_up_exit_2(ros_env, random_model_file, parameters,
                                                  fragments):
    """warmup_sizes beyond what the node accepts, a network size over the limit: exit 2."""
    code, log = _exit_code_and_log(ros_env, {'model_path': str(random_model_file),
                                             'torch_compile': False, **parameters})
    assert code == 2, log
    _one_fatal_line(log, *fragments)


def test_warmup_sizes_are_checked_before_anything_is_allocated():
    """['100000x100000'] ended in a numpy MemoryError (30 GB): now a ConfigError first."""
    from enet_ros.node.parameter_table import ConfigError
    from enet_ros.node.settings import warmup_sizes

    with pytest.raises(ConfigError, match='100000x100000 has more pixels than max_pixels'):
        warmup_sizes(['100000x100000'], 3840 * 2160)
    with pytest.raises(ConfigError, match="warm-up frame size '12x'"):
        warmup_sizes(['1280x720', '12x'], 3840 * 2160)
    assert warmup_sizes(['1280x720', '3840x2160'], 3840 * 2160) == ('1280x720', '3840x2160')


@pytest.mark.integration
def test_bad_models_at_run_time_are_refused_and_the_node_goes_on(ros_env, random_model_file,
                                                                 bad_models, tmp_path):
    """Setting model_path to each bad model (or a 5000-character path): refused, with why."""
    from sensor_msgs.msg import Image

    node = NodeProcess(ros_env, {'model_path': str(random_model_file), **TINY})
    peer = RosPeer(ros_env)
    try:
        node.wait_ready()
        peer.subscribe(Image, '/segmentation_node/labels', 'labels')
        publisher = peer.publisher(Image, '/image')
        peer.wait_for_subscribers(publisher)
        time.sleep(1.0)
        cases = [(str(path), BAD_MODELS[name][1]) for name, path in sorted(bad_models.items())]
        cases.append((str(tmp_path / ('x' * 5000)), 'File name too long'))
        for path, fragment in cases:
            [result] = set_parameters(peer, {'model_path': path})
            assert not result.successful, path
            assert fragment in result.reason and '\n' not in result.reason, result.reason
            assert node.process.poll() is None, node.log()
        assert get_parameter(peer, 'model_path') == str(random_model_file)
        assert get_parameter(peer, 'class_names') == list(CAMVID_11.names)
        msg = make_image_msg(np.zeros((48, 64, 3), np.uint8), 'rgb8', 7_000_000_000)
        publisher.publish(msg)
        assert peer.wait_for(lambda: any(stamp_ns(m) == stamp_ns(msg)
                                         for m in peer.messages('labels')), 20.0)
    finally:
        peer.close()
        assert node.stop() == 0


@pytest.fixture(scope='module')
def one_frame_bag(tmp_path_factory) -> Path:
    """Write a bag of one 64x48 frame with its labels."""
    bag = tmp_path_factory.mktemp('bag') / 'bag'
    labels = make_labels(0)
    header = bag_io.make_header(1, 'cam')
    with bag_io.BagWriter(bag) as writer:
        writer.add_topic('/camera/image_raw', bag_io.IMAGE)
        writer.add_topic('/camera/labels', bag_io.IMAGE)
        writer.write('/camera/image_raw', bag_io.array_to_image(make_image(labels, 0), 'rgb8',
                                                                header), 1)
        writer.write('/camera/labels', bag_io.array_to_image(labels, 'mono8', header), 1)
    return bag


@pytest.mark.parametrize('name', ['nested', 'dataset_list', 'nul_name'])
def test_evaluate_bag_refuses_a_bad_model_in_one_line(capsys, one_frame_bag, bad_models, name):
    """evaluate_bag --model with bad metadata: exit 1 and one error line, no traceback."""
    code = evaluate_main([str(one_frame_bag), '--model', str(bad_models[name]), '--device',
                          'cpu', '--no-progress'])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith('evaluate_bag: error:') and BAD_MODELS[name][1] in err, err


@pytest.mark.parametrize('name', ['nested', 'seen_5', 'boolean_colours'])
def test_enet_train_evaluate_refuses_a_bad_model_in_one_line(capsys, tmp_path, bad_models,
                                                             name):
    """enet-train evaluate --json with bad metadata: exit 2, one line naming the key."""
    from enet_training.cli import main as enet_train

    code = enet_train(['evaluate', '--model', str(bad_models[name]), '--data', str(tmp_path),
                       '--device', 'cpu', '--json', str(tmp_path / 'scores.json')])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith('enet-train: error:') and BAD_MODELS[name][1] in err, err
    assert not (tmp_path / 'scores.json').exists()
