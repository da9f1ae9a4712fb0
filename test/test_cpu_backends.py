"""
CPU inference backends: which runs where, what each gives, and falling back.

``inference_backend`` (``auto``, ``torch``, ``openvino``): auto decides by
CPU features (monkeypatched here to stand for other CPUs); OpenVINO labels
equal the eager torch reference's; a backend that cannot load or a CPU
without its instructions gets torch with a warning; the node runs and logs
the chosen configuration, including the OpenMP wait it sets for itself.
"""

import logging
from pathlib import Path
import sys
import time

from enet_ros.inference import backends, cpu_runtime
from enet_ros.model_file import load_model_file
from enet_ros.segmenter import Segmenter, SegmenterConfigError
import numpy as np
import pytest
from ros_harness import NodeProcess
import torch

AVX2_ONLY = frozenset({'sse4_2', 'avx', 'avx2', 'fma'})
AVX512_BF16 = AVX2_ONLY | {'avx512f', 'avx512_bf16'}
AVX512_FP32 = AVX2_ONLY | {'avx512f'}
NO_SSE42 = frozenset({'sse', 'sse2'})
CPU = torch.device('cpu')
HAS_OPENVINO = backends._openvino_installed()
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO,
                                    reason='openvino is not installed (requirements-dev.txt)')


def _features(monkeypatch, flags) -> None:
    monkeypatch.setattr(cpu_runtime, 'cpu_features', lambda: frozenset(flags))


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def test_auto_chooses_by_cpu_features(monkeypatch):
    """Auto: a timed trial on AVX2-only CPUs with OpenVINO; torch with AVX-512, bf16, CUDA."""
    monkeypatch.setattr(backends, '_openvino_installed', lambda: True)
    _features(monkeypatch, AVX2_ONLY)
    assert backends.resolve_backend('auto', CPU, torch.float32, True) == (backends.TIMED, None)
    assert backends.resolve_backend('torch', CPU, torch.float32, True) == ('torch', None)
    assert backends.resolve_backend('auto', CPU, torch.float32, False) == ('torch', None)
    assert backends.resolve_backend('auto', torch.device('cuda'), torch.float16,
                                    True) == ('torch', None)
    for flags in (AVX512_BF16, AVX512_FP32):
        _features(monkeypatch, flags)
        assert backends.resolve_backend('auto', CPU, torch.float32, True) == ('torch', None)
        # Asked for by name, OpenVINO runs there too.
        assert backends.resolve_backend('openvino', CPU, torch.float32, True)[0] == 'openvino'
    assert backends.resolve_backend('auto', CPU, torch.bfloat16, True) == ('torch', None)
    monkeypatch.setattr(backends, '_openvino_installed', lambda: False)
    _features(monkeypatch, AVX2_ONLY)
    assert backends.resolve_backend('auto', CPU, torch.float32, True) == ('torch', None)
    with pytest.raises(SegmenterConfigError, match='inference_backend'):
        backends.resolve_backend('tensorrt', CPU, torch.float32, True)
    with pytest.raises(SegmenterConfigError, match='cpu_threads'):
        backends.check_threads(-1)
    monkeypatch.setenv(backends.BACKEND_ENV, 'torch')
    assert backends.resolve_backend(None, CPU, torch.float32, True) == ('torch', None)
    monkeypatch.setenv(backends.BACKEND_ENV, 'tvm')
    with pytest.raises(SegmenterConfigError, match=backends.BACKEND_ENV):
        backends.resolve_backend(None, CPU, torch.float32, True)
    monkeypatch.delenv(backends.BACKEND_ENV)
    monkeypatch.setattr(backends, '_openvino_installed', lambda: True)
    assert backends.resolve_backend(None, CPU, torch.float32, True) == (backends.TIMED, None)


def test_startup_trial_keeps_the_preferred_backend_unless_clearly_slower():
    """The first backend of auto: torch unless OpenVINO is 15 % faster, as a later move needs."""
    def winner(openvino_ms: float, torch_ms: float, preferred=None) -> str:
        return backends.BackendTrial({'openvino': openvino_ms, 'torch': torch_ms}, (96, 64), 8,
                                     preferred).winner

    assert cpu_runtime.ThreadChoice((1, 2)).margin == cpu_runtime.SWITCH_MARGIN == 0.85
    assert winner(48.9, 50.4) == 'openvino'  # no preference: the smaller median
    assert winner(48.9, 50.4, 'torch') == 'torch'  # 3 % apart: a coin toss
    assert winner(43.0, 50.0, 'torch') == 'torch'  # 14 % faster: not enough
    assert winner(42.0, 50.0, 'torch') == 'openvino'  # 16 % faster
    assert winner(60.0, 50.0, 'torch') == 'torch'
    assert winner(40.0, 50.0, 'cuda') == 'openvino'  # a name not timed: the smaller median


@needs_openvino
@pytest.mark.parametrize('winner', ['openvino', 'torch'])
def test_auto_runs_the_faster_backend_and_moves_when_the_other_gets_faster(
        monkeypatch, core_logs, random_model_file, winner):
    """
    Auto on a CPU without AVX-512: both paths warm, timed at start-up and while frames run.

    The timings are real; which path is faster is forced here by slowing the
    other path's frames (and then the first one's: the frames move). Labels
    equal the eager reference's, and describe() and the log say what was timed.
    """
    _features(monkeypatch, AVX2_ONLY)
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    from enet_ros.inference.eager import EagerPath  # OpenVinoPath's base: one run for both

    run = EagerPath.run
    slowed = []
    slow = {'openvino' if winner == 'torch' else 'optimised'}  # path modes

    def slow_run(self, *args, **kwargs):
        if self.mode in slow:
            slowed.append(self.mode)
            time.sleep(0.1)  # a frame here takes 70-110 ms (1 thread, 480x360 network input)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(EagerPath, 'run', slow_run)
    loaded = load_model_file(random_model_file)
    with core_logs.at_level(logging.INFO):
        segmenter = Segmenter(loaded, device='cpu', torch_compile=False, warmup_sizes=['96x64'])
    trial = segmenter.backend_trial
    assert trial is not None and trial.frame_size == (96, 64)
    assert set(trial.medians_ms) == {'openvino', 'torch'} and trial.frames == backends.TRIAL_FRAMES
    assert trial.winner == winner == segmenter.backend, trial
    assert len(slowed) >= backends.TRIAL_FRAMES, slowed
    text = segmenter.describe()
    assert f'backend {winner} (' in text, text
    assert f'auto: openvino or torch, timed while frames run (now {winner}; at start-up ' \
        'openvino ' in text, text
    assert any(f'starting with {winner}' in r.getMessage() for r in core_logs.records), \
        core_logs.text
    reference = Segmenter(loaded, device='cpu', optimize=False)
    image = np.random.default_rng(5).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    want = reference.segment(image).labels
    assert _agreement(segmenter.segment(image).labels, want) >= 0.999
    # The first path gets slow: within a probe or two (at 50, then 150 frames) the frames move.
    other = 'torch' if winner == 'openvino' else 'openvino'
    slow.clear()
    slow.add('openvino' if winner == 'openvino' else 'optimised')
    for _ in range(160):
        segmenter.segment(image)
        if segmenter.backend == other:
            break
    assert segmenter.backend == other, segmenter.describe()
    assert _agreement(segmenter.segment(image).labels, want) >= 0.999
    assert f'(now {other};' in segmenter.describe()
    # Nothing to time without warm-up: OpenVINO, as the CPU-feature rule had it.
    untimed = Segmenter(loaded, device='cpu', torch_compile=False, warmup=False)
    assert untimed.backend == 'openvino' and untimed.backend_trial is None


def test_cpu_without_the_instructions_gets_torch(monkeypatch, core_logs, random_model_file):
    """Asked for OpenVINO, a CPU without SSE4.2 / NEON gets a warning, and torch runs."""
    _features(monkeypatch, NO_SSE42)
    with core_logs.at_level(logging.WARNING):
        segmenter = Segmenter.from_file(random_model_file, device='cpu',
                                        inference_backend='openvino', torch_compile=False,
                                        warmup=False)
    assert segmenter.backend == 'torch'
    assert 'backend torch' in segmenter.describe()
    assert any('SSE4.2' in r.getMessage() and 'running torch' in r.getMessage()
               for r in core_logs.records), core_logs.text
    # auto on an AVX-512 CPU: torch, no warning needed.
    _features(monkeypatch, AVX512_FP32)
    core_logs.clear()
    with core_logs.at_level(logging.WARNING):
        auto = Segmenter.from_file(random_model_file, device='cpu', torch_compile=False,
                                   warmup=False)
    assert auto.backend == 'torch' and not core_logs.records


def test_openvino_that_fails_to_import_falls_back(monkeypatch, core_logs, random_model_file):
    """An ImportError from openvino (missing, broken) is a warning, and the torch path runs."""
    monkeypatch.setitem(sys.modules, 'openvino', None)  # import openvino raises ImportError
    _features(monkeypatch, AVX2_ONLY)
    with core_logs.at_level(logging.WARNING):
        segmenter = Segmenter.from_file(random_model_file, device='cpu',
                                        inference_backend='openvino', torch_compile=False,
                                        warmup=False)
    assert segmenter.backend == 'torch'
    assert any('openvino failed to load' in r.getMessage() for r in core_logs.records), \
        core_logs.text
    labels = segmenter.segment(np.zeros((48, 64, 3), np.uint8)).labels
    assert labels.shape == (48, 64) and labels.dtype == np.uint8


@needs_openvino
def test_openvino_that_fails_to_compile_falls_back(monkeypatch, core_logs, random_model_file):
    """The CPU plugin refusing the graph (here a bad option) is a warning, not a crash."""
    from enet_ros.inference import openvino_backend

    monkeypatch.setattr(openvino_backend, 'compile_config',
                        lambda threads, precision='fp32': {'NO_SUCH_OPTION': 'x'})
    with core_logs.at_level(logging.WARNING):
        segmenter = Segmenter.from_file(random_model_file, device='cpu',
                                        inference_backend='openvino', torch_compile=False,
                                        warmup=False)
    assert segmenter.backend == 'torch'
    assert any('openvino failed to load' in r.getMessage() for r in core_logs.records)


@pytest.mark.slow
def test_preload_imports_what_an_openvino_build_imports_first(monkeypatch):
    """
    The node's process imports openvino and onnx before it answers services.

    (Importing onnx on the configure thread held the GIL 0.9 s.) Nothing where
    the OpenVINO path cannot run; a missing module is left to the build's
    fallback.
    """
    monkeypatch.setattr(backends, '_openvino_installed', lambda: True)
    _features(monkeypatch, NO_SSE42)
    assert backends.preload_openvino_modules() == ()
    _features(monkeypatch, AVX2_ONLY)
    monkeypatch.setitem(sys.modules, 'onnx', None)  # import onnx raises ImportError
    assert backends.preload_openvino_modules() == ('openvino',)
    monkeypatch.delitem(sys.modules, 'onnx')
    assert backends.preload_openvino_modules() == ('openvino', 'onnx')
    assert 'onnx' in sys.modules
    monkeypatch.setattr(backends, '_openvino_installed', lambda: False)
    assert backends.preload_openvino_modules() == ()


@needs_openvino
def test_openvino_keeps_the_segmenter_contract(random_model_file):
    """HxWx3 uint8 in, HxW uint8 labels (and float32 confidence) out, any size, RGB or BGR."""
    loaded = load_model_file(random_model_file)
    reference = Segmenter(loaded, device='cpu', optimize=False)
    segmenter = Segmenter(loaded, device='cpu', inference_backend='openvino', cpu_threads=1)
    assert segmenter.backend == 'openvino' and not segmenter.compiled
    text = segmenter.describe()
    assert 'backend openvino (1 thread;' in text and 'OpenVINO' in text, text
    rng = np.random.default_rng(3)
    for height, width in ((360, 480), (200, 300), (720, 1280)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for bgr in (False, True):
            got = segmenter.segment(image, bgr=bgr, with_confidence=True)
            want = reference.segment(image, bgr=bgr, with_confidence=True)
            assert got.labels.shape == (height, width) and got.labels.dtype == np.uint8
            assert got.confidence.shape == (height, width)
            assert got.confidence.dtype == np.float32
            assert _agreement(got.labels, want.labels) >= 0.999, (height, width, bgr)
            same = got.labels == want.labels
            np.testing.assert_allclose(got.confidence[same], want.confidence[same], atol=1e-3)
            plain = segmenter.segment(image, bgr=bgr)
            assert plain.confidence is None
            np.testing.assert_array_equal(plain.labels, got.labels)
    # A view into a read-only buffer with strides (as a message's data) works too.
    buffer = rng.integers(0, 256, (360, 480 * 3 + 12), dtype=np.uint8)
    buffer.flags.writeable = False
    view = buffer[:, :480 * 3].reshape(360, 480, 3)
    np.testing.assert_array_equal(segmenter.segment(view).labels,
                                  segmenter.segment(np.ascontiguousarray(view)).labels)
    # Images drawn on the host, as on the torch CPU path.
    segmenter.configure_images([(i, 2 * i, 3 * i) for i in range(11)], [3], 0.5)
    result = segmenter.segment(view, images=('colored', 'drivable'))
    assert result.images['colored'].shape == (360, 480, 3)
    np.testing.assert_array_equal(result.images['drivable'], (result.labels == 3) * 255)
    # logits() runs the plain graph: 1xCxhxw, close to the reference's.
    network_input = segmenter.preprocess(view)
    logits = segmenter.logits(network_input)
    assert logits.shape == (1, 11, 360, 480)
    assert float((logits - reference.logits(reference.preprocess(view))).abs().max()) < 1e-2


def test_thread_choice_runs_the_faster_count():
    """The timed choice keeps the faster count, follows a change of load, and probes rarely."""
    assert cpu_runtime.thread_candidates(1) == (1,)
    assert cpu_runtime.thread_candidates(2) == (2, 1)
    assert cpu_runtime.thread_candidates(8) == (8, 4)
    single = cpu_runtime.ThreadChoice((1,))
    for _ in range(200):
        assert single.next_threads() == 1
        single.record(1, 10.0)
    assert not single.adaptive and single.describe() == '1 thread'

    choice = cpu_runtime.ThreadChoice((2, 1))
    speed = {2: 50.0, 1: 80.0}  # idle: all threads faster

    def run(frames):
        used = []
        for _ in range(frames):
            threads = choice.next_threads()
            used.append(threads)
            choice.record(threads, speed[threads])
        return used

    used = run(1000)
    assert choice.current == 2 and choice.switches == 0
    assert 0 < used.count(1) <= 0.02 * len(used)  # probed, ever more rarely
    speed.update({2: 200.0, 1: 100.0})  # busy neighbours: the two threads wait on each other
    run(210)  # the next probe, at most 200 frames away after 1000 frames of losing probes
    assert choice.current == 1 and choice.switches == 1
    assert run(50).count(1) >= 48
    assert choice.describe() == '2 threads, or 1 when timed faster (now 1)'
    speed.update({2: 90.0})  # not 15 % faster than 100: stays
    run(300)
    assert choice.current == 1
    speed.update({2: 50.0})  # idle again: found at the next probe, after at most 200 frames
    run(220)
    assert choice.current == 2 and choice.switches == 2


@pytest.mark.slow
@needs_openvino
def test_openvino_auto_threads_are_timed_and_give_the_same_labels(random_model_file,
                                                                  monkeypatch):
    """Auto threads: compiled for all and half of torch's count, the same labels with either."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        loaded = load_model_file(random_model_file)
        reference = Segmenter(loaded, device='cpu', optimize=False)
        segmenter = Segmenter(loaded, device='cpu', inference_backend='openvino')
        fixed = Segmenter(loaded, device='cpu', inference_backend='openvino', cpu_threads=2)
    finally:
        torch.set_num_threads(previous)
    assert segmenter.path.thread_choice.candidates == (2, 1)
    assert 'backend openvino (2 threads, or 1 when timed faster (now 2);' in \
        segmenter.describe()
    assert fixed.path.thread_choice.candidates == (2,)
    assert 'backend openvino (2 threads;' in fixed.describe()
    # Switch on every probe (margin 10): frames alternate between the two counts.
    segmenter.path.thread_choice = cpu_runtime.ThreadChoice((2, 1), probe_every=1,
                                                            probe_frames=1, window=1,
                                                            margin=10.0)
    rng = np.random.default_rng(5)
    width, height = segmenter.input_size
    for index in range(8):
        image = rng.integers(0, 256, (height + 60 * (index % 2), width, 3), dtype=np.uint8)
        got = segmenter.segment(image, bgr=True)
        want = reference.segment(image, bgr=True).labels
        assert _agreement(got.labels, want) >= 0.999
    assert segmenter.path.thread_choice.switches >= 4
    # BGR frames at both sizes (u8 and resized float input) ran with both counts.
    assert {key for key in segmenter.path._requests if key[1]} == {
        (uint8, True, False, count) for uint8 in (True, False) for count in (1, 2)}


@pytest.mark.slow
def test_backends_equal_the_eager_reference_on_camvid_val(camvid_root: Path):
    """Every backend's labels (OpenVINO with either thread count) equal eager torch's (99.9 %)."""
    import cv2

    loaded = load_model_file(None)
    reference = Segmenter(loaded, device='cpu', optimize=False)
    candidates = {'torch': Segmenter(loaded, device='cpu', inference_backend='torch')}
    if HAS_OPENVINO:
        candidates['openvino'] = Segmenter(loaded, device='cpu', inference_backend='openvino')
        candidates['openvino 1 thread'] = Segmenter(loaded, device='cpu', cpu_threads=1,
                                                    inference_backend='openvino')
        assert candidates['openvino'].backend == 'openvino'
    frames = sorted((camvid_root / 'val').glob('*.png'))[::5]
    assert frames
    equal = dict.fromkeys(candidates, 0)
    total = 0
    for path in frames:
        image = cv2.imread(str(path))  # BGR, as a bgr8 camera sends
        want = reference.segment(image, bgr=True).labels
        total += want.size
        for name, segmenter in candidates.items():
            equal[name] += int((segmenter.segment(image, bgr=True).labels == want).sum())
    for name in candidates:
        assert equal[name] / total >= 0.999, f'{name}: {equal[name] / total:.5%}'


def test_process_defaults_respect_the_user(monkeypatch):
    """The node's OpenMP defaults go in only where the user set no OpenMP wait variable."""
    env = {'PATH': '/bin'}
    assert cpu_runtime.apply_process_defaults(env) == cpu_runtime.NODE_OPENMP_ENVIRONMENT
    assert env['ENET_ROS_OPENMP_WAIT'] == 'adaptive' and 'GOMP_SPINCOUNT' not in env
    for name in cpu_runtime.OPENMP_WAIT_VARIABLES:
        env = {name: '7'}
        assert cpu_runtime.apply_process_defaults(env) == {} and env == {name: '7'}
    assert cpu_runtime.openmp_wait_description({'OMP_WAIT_POLICY': 'passive'}).startswith(
        'OpenMP passive')
    assert cpu_runtime.openmp_wait_description({}) == 'OpenMP spin default'


@pytest.mark.parametrize('user_env, threads, expected', [
    ({}, 1, 'OpenMP spin default'),  # one thread: no team waits, nothing to choose
    ({'OMP_WAIT_POLICY': 'PASSIVE'}, 1, 'OpenMP passive (no spin)'),
    ({'OMP_NUM_THREADS': '2'}, 0,
     'OpenMP spin default, brief while other processes keep the cores busy, and the team then '
     'on the CPUs they leave free (set by the node)'),
    ({'OMP_NUM_THREADS': '2', 'ENET_ROS_OPENMP_WAIT': 'fixed'}, 0, 'OpenMP spin default'),
])
@pytest.mark.integration
def test_node_runs_and_logs_the_chosen_configuration(ros_env, user_env, threads, expected):
    """The node logs backend, threads and OpenMP wait; it sets the wait unless the user did."""
    env = {k: v for k, v in ros_env.items() if k not in cpu_runtime.OPENMP_WAIT_VARIABLES}
    env.update(user_env)
    timed = HAS_OPENVINO and not cpu_runtime.has_avx512(cpu_runtime.cpu_features())
    node = NodeProcess(env, {'device': 'cpu', 'torch_compile': False, 'cpu_threads': threads})
    try:
        node.wait_ready()
        log = node.log()
    finally:
        assert node.stop() == 0
    line = next((text for text in log.splitlines() if ' backend ' in text), '')
    assert expected in line, line
    adaptive = threads == 0 and 'ENET_ROS_OPENMP_WAIT' not in user_env
    assert ('brief while other processes keep the cores busy' in line) == adaptive, line
    chosen = 'torch'
    if timed:  # auto's trial: its log line, and describe() says what was timed
        trial = next((text for text in log.splitlines() if 'timed at start-up' in text), '')
        chosen = trial.split('starting with ', 1)[-1].split(',')[0].strip()
        assert chosen in ('openvino', 'torch'), log
        assert f'auto: openvino or torch, timed while frames run (now {chosen};' in line, line
    if threads == 1:
        assert f'backend {chosen} (1 thread' in line, log
        if chosen == 'torch':
            assert 'backend torch (1 thread,' in line  # cpu_threads set torch's pool
    elif chosen == 'openvino':  # auto: two threads (OMP_NUM_THREADS), or one when faster
        assert 'backend openvino (2 threads, or 1 when timed faster (now 2);' in line, line
    else:
        assert 'backend torch (2 threads,' in line, line
