"""
Two warmed CPU execution paths, torch and OpenVINO, and frames on whichever runs them faster.

``inference_backend: auto`` on CPUs without AVX-512 (see
:mod:`~enet_ros.inference.backends`). Why not one choice at start-up: on the
2-core Zen 3 (AVX2) this project measures on, OpenVINO was 0.8-1.4x the time
of compiled torch on idle cores, but beside busy processes torch (its
OpenMP threads spinning briefly) was faster in every run (1.2-2.5x), and a
vehicle's load comes and goes after start-up. So both paths stay warm and
:class:`~enet_ros.inference.cpu_runtime.ThreadChoice` (the timed choice
that also picks OpenVINO's thread count) re-times the other one on 2 frames
in every 50 (every 100, then 200, while it keeps losing) and moves when it
is at least 15 % faster. The start-up trial
(:func:`~enet_ros.inference.backends.time_backends`) picks the first, with
the same margin in torch's favour.
Both paths give the same labels (each is checked against the eager
reference), so a move changes the speed, never the output.
"""

import time
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from .cpu_runtime import ThreadChoice
from .frames import Segmentation


class TimedPaths:
    """
    Run frames on one of several execution paths, chosen by timing frames as they run.

    ``paths``: name to a warmed execution path (the EagerPath interface);
    ``first``: the name that runs first. Everything but :meth:`run`,
    :meth:`configure_images` and :meth:`warm_up` is the current path's
    (its pipeline, network, ``forward``, ``run_batch``, ``describe``, ...).
    Not thread-safe: one frame at a time, as every path.
    """

    def __init__(self, paths: Mapping[str, object], first: str,
                 startup: Optional[Mapping[str, float]] = None):
        if first not in paths or len(paths) < 2:
            raise ValueError(f'TimedPaths needs two paths or more and one of them first, got '
                             f'{list(paths)} and {first!r}')
        self.paths = dict(paths)
        self.choice = ThreadChoice((first, *[name for name in paths if name != first]))
        #: The start-up trial's median milliseconds by name, for describe().
        self.startup = dict(startup or {})

    @property
    def current_name(self) -> str:
        """Return the name of the path that runs the next frames."""
        return self.choice.current

    @property
    def current(self):
        """Return the path that runs the next frames."""
        return self.paths[self.choice.current]

    def __getattr__(self, name: str):
        if name in ('paths', 'choice', 'startup'):  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.current, name)

    def run(self, image: np.ndarray, bgr: bool = False, with_confidence: bool = False,
            images: Sequence[str] = (), out=None) -> Segmentation:
        """Segment one frame (the EagerPath ``run`` contract) on the chosen path, timed."""
        name = self.choice.next_threads()
        start = time.perf_counter()
        result = self.paths[name].run(image, bgr, with_confidence, images, out)
        self.choice.record(name, (time.perf_counter() - start) * 1e3)
        return result

    def configure_images(self, colors: Sequence[Tuple[int, int, int]], drivable_ids,
                         overlay_alpha: float) -> None:
        """Configure the drawn images on every path (any of them may run the next frame)."""
        for path in self.paths.values():
            path.configure_images(colors, drivable_ids, overlay_alpha)

    def warm_up(self, sizes=None) -> None:
        """Warm every path."""
        for path in self.paths.values():
            path.warm_up(sizes)

    def describe_choice(self) -> str:
        """``auto: openvino or torch, timed while frames run (now torch; at start-up ...)``."""
        names = ' or '.join(self.paths)
        startup = ', '.join(f'{name} {ms:.1f} ms' for name, ms in self.startup.items())
        return (f'auto: {names}, timed while frames run (now {self.current_name}'
                + (f'; at start-up {startup} a frame' if startup else '') + ')')
