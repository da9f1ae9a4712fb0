"""The model the node uses, held with what derives from it, and how a model file becomes one."""

from typing import Callable, Optional

from .frame_setup import FrameSetup
from .parameter_table import ConfigError
from .settings import StartupSettings
from ..model_file import load_model_file, LoadedModel, ModelFileError
from ..segmenter import Segmenter, SegmenterConfigError


class ModelHolder:
    """
    The model in use, as the :class:`FrameSetup` that frames read, swapped in as one object.

    :meth:`load` reads and validates a model file, :meth:`build` makes a warmed
    Segmenter of it with the start-up device settings given to :meth:`configure`.
    :meth:`install` puts a new setup in place (configure, a parameter change,
    a finished model swap; all on the executor or configure thread) and calls
    ``on_installed`` with it; the frame loop reads :attr:`setup` once per frame.
    """

    def __init__(self, on_installed: Callable[[FrameSetup], None]):
        self._on_installed = on_installed
        self._setup: Optional[FrameSetup] = None
        self._startup: Optional[StartupSettings] = None
        #: Bumped by cleanup: a model build started before it is discarded when it ends.
        self.generation = 0

    @property
    def setup(self) -> Optional[FrameSetup]:
        """Return what a frame uses: the model and the settings (None while not configured)."""
        return self._setup

    @property
    def segmenter(self) -> Optional[Segmenter]:
        """Return the model in use now (None while not configured)."""
        setup = self._setup
        return None if setup is None else setup.segmenter

    def configure(self, startup: Optional[StartupSettings]) -> None:
        """Take the start-up settings that :meth:`build` uses (None: cleaned up)."""
        self._startup = startup

    def install(self, setup: Optional[FrameSetup]) -> None:
        """Put ``setup`` in use; the next frame takes it (None: released, nothing is called)."""
        self._setup = setup
        if setup is not None:
            self._on_installed(setup)

    @staticmethod
    def load(model_path: str) -> LoadedModel:
        """
        Read and validate a model file; raise ConfigError naming the parameter.

        Any failure is a refused file: in the parameter callback an exception
        other than ConfigError would end the executor, and with it the node.
        """
        try:
            return load_model_file(model_path or None)
        except ModelFileError as error:
            raise ConfigError(f'parameter model_path: {error}') from None
        except Exception as error:  # noqa: B902 - e.g. MemoryError: refused, the node lives
            raise ConfigError(f"parameter model_path: model file '{model_path}' cannot be "
                              f'loaded ({type(error).__name__}: {error})') from None

    def build(self, loaded: LoadedModel) -> Segmenter:
        """Build and warm a Segmenter for ``loaded`` with the start-up device settings."""
        startup = self._startup
        size = ((startup.network_width, startup.network_height)
                if startup.network_width else None)
        try:
            return Segmenter(loaded, device=startup.device, precision=startup.precision,
                             input_size=size,
                             torch_compile=None if startup.torch_compile else False,
                             warmup_sizes=startup.warmup_sizes or None,
                             inference_backend=(None if startup.inference_backend == 'auto'
                                                else startup.inference_backend),
                             cpu_threads=startup.cpu_threads or None)
        except SegmenterConfigError as error:
            raise ConfigError('parameters device / precision / network size / warmup_sizes / '
                              f'inference_backend / cpu_threads: {error}') from None
