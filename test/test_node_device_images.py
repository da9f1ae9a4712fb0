"""The node's images from the Segmenter (the CUDA path's branch) equal its own numpy ones."""

import time

from enet_ros.node.segmentation_node import SegmentationNode
import numpy as np
import pytest
from ros_harness import make_image_msg

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('ignore::DeprecationWarning')]

IMAGES = ('labels', 'colored', 'overlay', 'drivable')


@pytest.fixture
def node(random_model_file, rclpy_context):
    """Build an in-process node on the CPU (also on a CUDA machine), every image published."""
    from rclpy.parameter import Parameter

    built = SegmentationNode(context=rclpy_context, parameter_overrides=[
        Parameter('model_path', value=str(random_model_file)),
        Parameter('device', value='cpu'),
        Parameter('torch_compile', value=False),
        Parameter('publish', value=list(IMAGES))])
    yield built
    built.destroy_node()


def _published(node: SegmentationNode, pixels: np.ndarray, encoding: str):
    """Process one frame; return {output: bytes published} and the Segmenter's ``images``."""
    camera = node.cameras[0]
    camera.subscribed_outputs = lambda publish: [name for name in publish if name in IMAGES]
    sent = {}
    for name in IMAGES:
        camera.publishers[name].publish = (
            lambda msg, name=name: sent.__setitem__(name, bytes(msg.data)))
    asked = []
    segment = node.segmenter.segment

    def recording(*args, **kwargs):
        asked.append(tuple(kwargs.get('images', ())))
        return segment(*args, **kwargs)

    node.segmenter.segment = recording
    try:
        node._process(camera, make_image_msg(pixels, encoding, time.time_ns()), time.monotonic())
    finally:
        node.segmenter.segment = segment
    return sent, asked


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8'])
def test_images_from_the_segmenter_equal_the_nodes_own(node, encoding):
    """
    With images_on_device the node publishes the Segmenter's images, byte for byte its own.

    On the CPU the Segmenter draws them with the same numpy renderer; on CUDA in the frame's
    graph (``test_gpu.py`` checks those equal numpy's). Here the node's branch is checked.
    """
    pixels = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    state = node._state
    assert not state.images_on_device  # the CPU path draws on the host
    host, asked = _published(node, pixels, encoding)
    assert asked == [()] and set(host) == set(IMAGES)
    drivable = [state.segmenter.metadata.class_names.index(name)
                for name in state.settings.drivable_classes]
    state.segmenter.configure_images(state.segmenter.metadata.colors, drivable,
                                     state.settings.overlay_alpha)
    state.images_on_device = True
    device, asked = _published(node, pixels, encoding)
    assert asked == [('colored', 'overlay', 'drivable')]
    assert device == host
