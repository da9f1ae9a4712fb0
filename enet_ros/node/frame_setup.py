"""What a frame uses: the model and what derives from it and the run-time settings, as one."""

from typing import Dict, Optional

from .health import HealthThresholds
from .settings import RuntimeSettings
from .. import masks
from ..camera_model import CameraPose
from ..segmenter import Segmenter

#: Label id for pixels voided by min_confidence when the model file has no void id.
DEFAULT_VOID_ID = 255


class FrameSetup:
    """The model and everything derived from it and the run-time settings, swapped as one."""

    def __init__(self, segmenter: Segmenter, settings: RuntimeSettings):
        self.segmenter = segmenter
        self.settings = settings
        metadata = segmenter.metadata
        self.void_id = DEFAULT_VOID_ID if metadata.void_id is None else metadata.void_id
        drivable_ids = [metadata.class_names.index(n) for n in settings.drivable_classes]
        self.renderer = masks.OutputRenderer(metadata.colors, drivable_ids,
                                             settings.overlay_alpha)
        #: Whether the Segmenter draws the colour, overlay and drivable images in its CUDA
        #: graph (numpy took five times the frame's time at 1280x720 on an H100 host).
        self.images_on_device = segmenter.images_on_device and settings.min_confidence <= 0
        self._device_tables = (metadata.colors, drivable_ids, settings.overlay_alpha)
        self._device_tables_set = False
        self.min_interval_s = 1.0 / settings.max_rate_hz if settings.max_rate_hz > 0 else 0.0
        self.thresholds = HealthThresholds(settings.stale_input_s, settings.latency_warn_ms,
                                           settings.max_consecutive_failures)
        self.grid_spec = settings.grid.spec()
        self.poses: Dict[str, Optional[CameraPose]] = {
            name: values.pose(settings.grid.ground_z)
            for name, values in settings.camera_poses.items()}

    def prepare_device_images(self) -> None:
        """
        Give the Segmenter this state's palette, drivable classes and overlay weight.

        Call it on the inference thread before a frame: the tables live on the
        device, read by the captured graphs, and a parameter change (executor
        thread) must not write them under a frame in flight. Once per state.
        """
        if self.images_on_device and not self._device_tables_set:
            self.segmenter.configure_images(*self._device_tables)
            self._device_tables_set = True
