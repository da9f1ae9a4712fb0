"""
Fine-tuning: start from a model file (``--init``), into the same or new classes.

ENet's only class-dependent layer is its last, ``fullconv`` (a 16 -> C
transposed convolution): every other tensor keeps its shape whatever the
classes. Starting from a model with other classes therefore keeps every
tensor whose name and shape match and re-initialises ``fullconv`` (seeded, as
a fresh network would draw it); the encoder head of two-stage training is
always fresh. With the same class names in the same order everything is kept.

``--freeze-encoder-epochs N`` keeps the encoder (the initial block to
``dilated3_8``) fixed for the first N epochs, so the new classifier settles
before the features it reads start to move. Frozen parameters take no
gradient (the backward pass stops at the decoder), so Adam leaves them and
their weight decay alone. Their BatchNorm statistics still follow the new
data (training mode); ``--freeze-bn`` fixes those too.
"""

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from enet_ros.labels import ClassTable
from enet_ros.model import ENet
from enet_ros.model_file import BUNDLED_MODEL, load_model_file, LoadedModel
import torch
from torch import nn

#: The tensors that depend on the number of classes: re-initialised for other classes.
CLASSIFIER_TENSORS = ('fullconv.weight',)
#: ``--init bundled``: the model that ships inside the enet_ros package.
BUNDLED = 'bundled'


def init_model_path(init: Optional[Path]) -> Optional[Path]:
    """Resolve ``--init``: ``bundled`` is the bundled model file, anything else a path."""
    if init is None:
        return None
    return BUNDLED_MODEL if str(init) == BUNDLED else Path(init)


def _shape(tensor: torch.Tensor) -> str:
    return 'x'.join(str(v) for v in tensor.shape)


def load_init_weights(enet: ENet, init: Path, table: ClassTable,
                      log: Callable[[str], None]) -> LoadedModel:
    """
    Load ``init``'s weights into ``enet`` (built for ``table``); log what was kept.

    Same classes (names, in order): all weights. Other classes: every tensor
    whose name and shape match except :data:`CLASSIFIER_TENSORS`, which keep
    ``enet``'s fresh (seeded) values; the log line names them.
    """
    loaded = load_model_file(init_model_path(init))
    source = loaded.metadata
    if tuple(source.class_names) == tuple(table.names):
        enet.load_state_dict(loaded.state_dict)
        log(f"--init {init}: all {len(loaded.state_dict)} tensors of '{loaded.path}' "
            f'({source.num_classes} {source.dataset} classes, the same as the data)')
        return loaded
    own = enet.state_dict()
    kept: Dict[str, torch.Tensor] = {}
    fresh: List[str] = []
    for name, tensor in own.items():
        theirs = loaded.state_dict.get(name)
        if name in CLASSIFIER_TENSORS or theirs is None or theirs.shape != tensor.shape:
            fresh.append(f'{name} ({_shape(theirs) if theirs is not None else "absent"} in the '
                         f'init model, {_shape(tensor)} here)')
        else:
            kept[name] = theirs
    enet.load_state_dict(kept, strict=False)
    why = ('other class names' if source.num_classes == table.num_classes
           else f'{source.num_classes} classes there, {table.num_classes} here')
    log(f"--init {init}: fine-tuning '{loaded.path}' ({source.dataset}: "
        f"{', '.join(source.class_names)}) into {table.dataset} ({', '.join(table.names)}); "
        f'kept {len(kept)} of {len(own)} tensors; re-initialised the classifier ({why}): '
        + '; '.join(fresh))
    return loaded


def encoder_modules(enet: ENet) -> List[Tuple[str, nn.Module]]:
    """Return ENet's encoder blocks in order: ``initial`` to ``dilated3_8`` (before stage 4)."""
    children = list(enet.named_children())
    names = [name for name, _ in children]
    return children[:names.index('upsample4_0')]


def set_encoder_frozen(enet: ENet, frozen: bool) -> bool:
    """Freeze (or thaw) the encoder's parameters; return whether anything changed."""
    changed = False
    for _, module in encoder_modules(enet):
        for parameter in module.parameters():
            changed = changed or parameter.requires_grad == frozen
            parameter.requires_grad_(not frozen)
    return changed


def count_trainable(model: nn.Module) -> Tuple[int, int]:
    """Return (trainable parameters, all parameters) of ``model``."""
    parameters = list(model.parameters())
    return (sum(p.numel() for p in parameters if p.requires_grad),
            sum(p.numel() for p in parameters))


def apply_frozen_modes(model: nn.Module, freeze_bn: bool, no_dropout: bool) -> None:
    """
    After ``model.train()``: BatchNorm layers to eval mode (``--freeze-bn``), dropout off.

    ``freeze_bn``: the layers normalise with their running statistics and
    keep them (their affine weights still train). ``no_dropout``: ENet's
    spatial dropout passes everything through. Either makes a frame's forward
    independent of the rest of its batch and of the random streams.
    """
    for module in model.modules():
        if freeze_bn and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
        if no_dropout and isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
