"""
Loading a new model at run time: checked at once, warmed off the inference path, then used.

The node's parameter callback validates the file (header, metadata, weight
shapes: :func:`~enet_ros.model_file.load_model_file`) and the drivable
classes before it answers, so a bad file is refused with its reason. Building
and warming the Segmenter (which compiles it on the CPU) then runs on a thread
of its own: neither the executor (frames keep arriving) nor the inference loop
(frames keep being segmented with the old model) waits for it. When it is
ready, ``on_ready`` installs it (given the seconds the build and warm-up took);
the next frame uses it.
"""

import threading
import time
from typing import Any, Callable

from .parameter_table import ConfigError
from ..model_file import LoadedModel
from ..segmenter import Segmenter


class ModelSwap:
    """One background model build at a time; see the module docstring."""

    def __init__(self, build: Callable[[LoadedModel], Segmenter],
                 on_ready: Callable[[Segmenter, float, Any], None],
                 on_failed: Callable[[str, Any], None]):
        self._build = build
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._lock = threading.Lock()
        self._thread = None

    def start(self, loaded: LoadedModel, context: Any) -> None:
        """
        Build ``loaded`` on a new thread; ``context`` is handed to the callbacks.

        Raises :class:`ConfigError` while another build runs.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise ConfigError('model_path: another model is still being loaded; try again '
                                  'when it is in use')
            self._thread = threading.Thread(target=self._run, args=(loaded, context),
                                            name='model-swap', daemon=True)
            self._thread.start()

    def _run(self, loaded: LoadedModel, context: Any) -> None:
        started = time.monotonic()
        try:
            segmenter = self._build(loaded)
        except Exception as error:  # noqa: B902 - reported, the old model stays
            self._on_failed(f'{type(error).__name__}: {error}', context)
            return
        self._on_ready(segmenter, time.monotonic() - started, context)

    def join(self, timeout: float) -> None:
        """Wait for a build in progress (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
