"""live_evaluate against the real segmentation node process on a small bag."""

import json
import subprocess
import sys
import textwrap

from bag_helpers import camvid_metadata, make_camvid, make_labels, quick_cpu, subprocess_env
from enet_ros.evaluation.bag_io import (bag_topics, deserialize, frame_names, open_bag,
                                        read_messages, stamp_to_ns)
from enet_ros.evaluation.dataset_to_bag import main as dataset_to_bag
from enet_ros.evaluation.evaluate_bag import evaluate_bag, EvaluateOptions
from enet_ros.evaluation.ground_truth import StampMatcher
from enet_ros.evaluation.live_evaluate import TRANSPORT_VARIABLES
from enet_ros.evaluation.live_playback import DROPPED, LiveSession
from enet_ros.evaluation.scoring import Prediction, Scoreboard, Tally
from enet_ros.segmenter import Segmenter
import pytest

COUNT = 6
pytestmark = pytest.mark.usefixtures(quick_cpu.__name__)


@pytest.mark.integration
@pytest.mark.parametrize('image_format', ['raw', 'png'])
def test_live_matches_offline_on_answered_frames(tmp_path, ros_env, model_file, image_format):
    root = tmp_path / 'camvid'
    make_camvid(root, COUNT)
    bag = root / 'bag'
    assert dataset_to_bag([str(root), str(bag), '--rate', '10', '--format', image_format,
                           '--storage', 'mcap', '--no-progress']) == 0
    env = subprocess_env(ros_env)
    result = subprocess.run(
        [sys.executable, '-m', 'enet_ros.evaluation.live_evaluate', str(bag), '--model',
         str(model_file), '-p', 'device:=cpu', '--json', str(tmp_path / 'live.json'),
         '--wait', '10', '--no-progress', '--record-bag', str(tmp_path / 'outputs')],
        env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'end-to-end latency' in result.stdout
    report = json.loads((tmp_path / 'live.json').read_text())
    frames = report['frames']
    assert frames['read'] == frames['published'] == COUNT
    assert frames['answered'] + frames['dropped'] == COUNT
    assert frames['answered'] >= 1
    assert frames['evaluated'] == frames['answered']
    statuses = [r['status'] for r in report['per_frame']]
    assert None not in statuses
    answered = {r['stamp_ns'] for r in report['per_frame'] if r['status'] == 'evaluated'}
    assert len(answered) == frames['answered']
    assert report['end_to_end_latency']['count'] == frames['answered']
    assert report['end_to_end_latency']['p50_ms'] > 0
    assert report['node']['exit_code'] == 0

    with open_bag(tmp_path / 'outputs') as recorded:
        topics = bag_topics(recorded)
        for output in ('labels', 'colored', 'overlay', 'drivable'):
            assert topics[f'/segmentation_node/{output}'].count == frames['answered'], output
        stamps = {stamp_to_ns(deserialize(raw.data, raw.msgtype).header.stamp)
                  for raw in read_messages(recorded, ['/segmentation_node/labels'])}
        recorded_names = frame_names(recorded)
    assert stamps == answered
    with open_bag(bag) as source:  # the recording carries the frame names of what it holds
        names = frame_names(source)
    assert {s: names[s] for s in answered}.items() <= recorded_names.items() <= names.items()

    offline = evaluate_bag(EvaluateOptions(bag=bag, stamps=answered, progress=False),
                           Segmenter.from_file(str(model_file), device='cpu'))
    assert offline['frames']['evaluated'] == frames['answered']
    assert offline['accuracy']['confusion_matrix'] == report['accuracy']['confusion_matrix']
    assert offline['accuracy']['mean_iou'] == pytest.approx(report['accuracy']['mean_iou'])


@pytest.mark.integration
def test_live_evaluate_leaves_the_environment_alone(tmp_path, ros_env):
    """The library call sets no Fast DDS profile in os.environ; it says when none is set."""
    root = tmp_path / 'camvid'
    make_camvid(root, 2)
    assert dataset_to_bag([str(root), str(root / 'bag'), '--no-progress']) == 0
    env = subprocess_env(ros_env)
    for name in TRANSPORT_VARIABLES:
        env.pop(name, None)
    code = textwrap.dedent("""
        import os, sys
        from enet_ros.evaluation.live_evaluate import live_evaluate, LiveError, LiveOptions
        before = dict(os.environ)
        try:
            live_evaluate(LiveOptions(bag=sys.argv[1], attach=True, startup_timeout=1,
                                      settle=0, progress=False))
        except LiveError as error:
            print('LiveError:', error)
        assert dict(os.environ) == before, 'live_evaluate changed os.environ'
    """)
    result = subprocess.run([sys.executable, '-c', code, str(root / 'bag')], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'LiveError: the segmentation node was not ready' in result.stdout
    assert 'no Fast DDS profile' in result.stderr


@pytest.mark.integration
def test_offline_tools_do_not_import_rclpy():
    code = ('import sys, enet_ros.evaluation.evaluate_bag, enet_ros.evaluation.dataset_to_bag, '
            'enet_ros.evaluation.live_evaluate, enet_ros.evaluation.live_peer, '
            'enet_ros.evaluation.report; '
            'assert "rclpy" not in sys.modules, "rclpy imported"')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


def test_session_accounts_for_every_frame():
    """Answers, drops (a later frame answered first) and the final timeout, without ROS."""
    metadata = camvid_metadata()
    truth = {stamp: make_labels(stamp) for stamp in (1, 2, 3, 4, 5)}
    tally = Tally(Scoreboard(metadata, metadata.drivable_classes),
                  matcher=StampMatcher(set(truth) - {5}))
    session = LiveSession(tally)
    for stamp in (1, 2, 3, 4, 5):
        record = tally.new_record(stamp)
        record['stamp_ns'] = stamp
        session.published(stamp, record, float(stamp))
        if stamp != 3:
            tally.truth(stamp, truth[stamp])
    session.answer(1, 1.5, truth[1])             # truth first, then the answer
    session.answer(3, 3.25, truth[3])            # frame 2 dropped; truth of 3 not read yet
    tally.truth(3, truth[3])
    session.answer(5, 5.5, truth[5])             # frame 4 dropped; 5 has no ground truth
    session.answer(9, 9.0, truth[5])             # not ours
    statuses = [r['status'] for r in tally.records]
    assert statuses == ['evaluated', DROPPED, 'evaluated', DROPPED,
                        'no ground truth for the stamp']
    assert (session.answered, session.dropped, session.unexpected) == (3, 2, 1)
    assert tally.scoreboard.frames == 2
    assert session.latencies == pytest.approx([0.5, 0.25, 0.5])
    assert tally.scoreboard.as_dict()['mean_iou'] == 1.0


def test_abandoned_frames_keep_no_ground_truth():
    """A frame skipped for good forgets its truth (read before or after); a duplicate does not."""
    metadata = camvid_metadata()
    matcher = StampMatcher()
    tally = Tally(Scoreboard(metadata, metadata.drivable_classes), matcher=matcher)
    tally.truth(1, make_labels(1))                 # read before the frame
    for stamp in (1, 2, 3, 3):
        record = tally.new_record(stamp)
        record['stamp_ns'] = stamp
        if stamp in (1, 2):
            tally.abandon(record, 'unsupported encoding')
        elif tally.records[-2]['stamp_ns'] == 3:
            tally.skip(record, 'duplicate stamp')  # the first frame of stamp 3 still waits
        else:
            tally.predicted(3, Prediction(record, make_labels(3)))
    tally.truth(2, make_labels(2))                 # read after the frame
    assert matcher.unmatched_truth() == []
    tally.truth(3, make_labels(3))
    assert [r['status'] for r in tally.records] == [
        'unsupported encoding', 'unsupported encoding', 'evaluated', 'duplicate stamp']
    assert tally.skipped['unsupported encoding'] == 2
