"""
``enet-train``: train, evaluate and export ENet model files.

Exit codes: 0 done; 2 bad input (dataset, model file, device, an output path that
cannot be written, refused before the work); 3 ``evaluate``: the scores were printed
but ``--json`` could not be written (one line names the file).
"""

import argparse
import contextlib
import dataclasses
import json
import os
from pathlib import Path
import shutil
import sys
from typing import Any, Dict, List, Optional, Tuple

from enet_ros.dataset_layouts import detect_layout
from enet_ros.labels import CLASS_TABLES
from enet_ros.model_file import (load_model_file, LoadedModel, ModelFileError, ModelMetadata,
                                 save_model_file)
from enet_ros.segmenter import cpu_supports_bf16, Segmenter, SegmenterConfigError
import torch

from .datasets import DatasetError, DATASETS, LayoutOptions, make_dataset
from .evaluate import evaluate_segmenter, format_scores
from .onnx_export import OnnxExportError


class OutputPathError(ValueError):
    """An output file that cannot be written, refused before the work starts."""


#: Errors that are the user's input, reported as one line and exit status 2 (no traceback).
USER_ERRORS = (DatasetError, ModelFileError, SegmenterConfigError, OutputPathError,
               OnnxExportError)
#: Exit status of ``evaluate`` when the scores were printed but --json could not be written.
EXIT_OUTPUT_FAILED = 3


def check_output_file(path: Path, option: str) -> None:
    """Raise :class:`OutputPathError` when ``path`` cannot be written (a folder, no folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} '{path}' is a folder, not a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{option} '{path}' cannot be written: '{folder}' is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} '{path}' cannot be written: folder '{folder}' is not "
                              'writable')


def _seen_note(segmenter: Segmenter, split: str) -> Optional[str]:
    """Return the model's note on a split it was trained on; no crash for odd metadata."""
    try:
        return segmenter.metadata.seen_split_note(split)
    except (TypeError, ValueError, AttributeError) as error:
        return f"note: the model's training record cannot say whether it saw {split} ({error})"


def evaluation_dataset(choice: Optional[str], data: Path, metadata: ModelMetadata) -> str:
    """
    Return the dataset ``enet-train evaluate`` reads: ``--dataset``, else the layout found.

    A folder with ``labelmap.txt`` or ``classes.yaml`` is a dataset of your
    own; otherwise the model's dataset (camvid or cityscapes).
    """
    if choice:
        return choice
    found = detect_layout(data)
    if found:
        return found
    if metadata.dataset in CLASS_TABLES:
        return metadata.dataset
    raise DatasetError(f"'{data}' holds no VOC / CVAT (labelmap.txt) or plain (classes.yaml) "
                       f'layout, and the model was trained on {metadata.dataset}: name the '
                       f"layout with --dataset ({', '.join(DATASETS)})")


def _evaluate(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, '--json')
    segmenter = Segmenter.from_file(str(args.model or ''), device=args.device,
                                    precision=args.precision)
    dataset = make_dataset(evaluation_dataset(args.dataset, args.data, segmenter.metadata),
                           args.data, args.split, options=LayoutOptions(tuple(args.void_label)))
    if tuple(segmenter.metadata.class_names) != tuple(dataset.table.names):
        raise DatasetError(f'the model predicts {list(segmenter.metadata.class_names)}, the '
                           f'{dataset.table.dataset} labels are {list(dataset.table.names)}: '
                           'scores would pair the wrong classes (check --dataset and --model)')
    scores = evaluate_segmenter(segmenter, dataset)
    # The table first, the file after: a file that cannot be written loses nothing printed.
    print(f'{segmenter.describe()}\n{args.split}: {len(dataset)} images')
    print(format_scores(scores, segmenter.metadata.class_names))
    note = _seen_note(segmenter, args.split)
    if note:
        print(note)
    sys.stdout.flush()
    if args.json:
        text = json.dumps(scores.as_dict(segmenter.metadata.class_names), indent=2)
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text)
        except OSError as error:
            with contextlib.suppress(OSError):
                Path(args.json).unlink(missing_ok=True)  # a truncated file is no result
            print(f"enet-train: error: --json '{args.json}' could not be written: "
                  f'{error.strerror or error}', file=sys.stderr)
            return EXIT_OUTPUT_FAILED
    return 0


def _read_record(path: Optional[Path]) -> Dict[str, Any]:
    if path is None:
        return {}
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ModelFileError(path, f'cannot be read as a JSON record ({error})') from None
    if not isinstance(record, dict):
        raise ModelFileError(path, 'must hold a JSON object (keys for the training record)')
    return record


def checkpoint_model(source: Path, record: Dict[str, Any]) -> LoadedModel:
    """
    Return the model a ``checkpoint.pth`` stands for: its (averaged) weights and metadata.

    The classes are the checkpoint's own (``class_table``; CamVid's or
    Cityscapes' for checkpoints from before it was kept).
    """
    from .checkpoint import checkpoint_enet_weights, held_out_val_miou, table_from_record
    from .run_setup import DEFAULT_INPUT_SIZE
    try:
        # weights_only: tensors and plain data only, so no code in the file runs.
        state = torch.load(source, map_location='cpu', weights_only=True)
        saved, epoch = state['args'], state['epoch']
        table = (table_from_record(state['class_table']) if 'class_table' in state
                 else CLASS_TABLES[saved['dataset']])
        input_size = tuple(saved.get('input_size') or DEFAULT_INPUT_SIZE[saved['dataset']])
        # The weight average's with --ema (what validation scored), else the model's.
        weights = checkpoint_enet_weights(state)
    except Exception as error:  # torch.load raises many types for foreign files
        raise ModelFileError(source, f'is not an enet-train checkpoint ({error!r})') from None
    # The checkpoint holds the last epoch's weights: record their own val score, if any
    # (as seen_val_miou, not val_miou, when val was trained on).
    val_miou, seen = held_out_val_miou(
        (state.get('history') or [{}])[-1].get('val_miou'),
        saved.get('train_split', 'train'), saved.get('val_split', 'val'))
    metadata = ModelMetadata.from_class_table(
        table, input_size, val_miou=val_miou,
        training={'epoch': epoch, 'args': saved, **seen, **record})
    return LoadedModel(str(source), metadata, weights)


def _export(args: argparse.Namespace) -> int:
    source = Path(args.source)
    if args.out is None and args.onnx is None:
        raise ModelFileError(source, 'nothing to export to: give --out FILE.safetensors (the '
                                     "node's model file) and/or --onnx FILE.onnx")
    if not source.is_file():
        raise ModelFileError(source, 'does not exist (expected a best.safetensors or a '
                                     'checkpoint.pth of a training run)')
    record = _read_record(args.record)
    if source.suffix == '.safetensors':
        loaded = load_model_file(source)  # validate before copying
        if record:
            loaded = LoadedModel(loaded.path, dataclasses.replace(
                loaded.metadata, training={**loaded.metadata.training, **record}),
                loaded.state_dict)
    else:
        loaded = checkpoint_model(source, record)
    if args.onnx is not None:
        from .onnx_export import export_onnx
        agreement = export_onnx(loaded, args.onnx, args.check_image)
        width, height = loaded.metadata.input_size
        print(f"exported '{args.onnx}': ONNX opset 17, input 1x3x{height}x{width}, "
              f'{loaded.metadata.num_classes} classes; ONNX Runtime agrees with the Segmenter '
              f'on {100 * agreement:.3f}% of the check pixels')
    if args.out is None:
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == '.safetensors' and not record:
        shutil.copyfile(source, args.out)
    else:
        save_model_file(args.out, loaded.state_dict, loaded.metadata)
    loaded = load_model_file(args.out)
    seen = loaded.metadata.training.get('val_seen_in_training')
    score = (f'val mIoU {loaded.metadata.val_miou}' if not seen else
             f"no held-out val mIoU ({'+'.join(seen)} trained on; seen-data mIoU "
             f"{loaded.metadata.training.get('seen_val_miou')})")
    print(f"exported '{args.out}': {loaded.metadata.num_classes} classes, {score}")
    if args.score is not None:
        scores = deployed_scores(args.out, args.score, args.score_split)
        metadata = dataclasses.replace(
            loaded.metadata, training={**loaded.metadata.training, 'deployed_scores': scores})
        save_model_file(args.out, loaded.state_dict, metadata)
    return 0


def deployed_precisions() -> List[Tuple[str, str]]:
    """Return the (device, precision) pairs the node would run a model at on this machine."""
    pairs = [('cpu', 'fp32')]
    if cpu_supports_bf16():
        pairs.append(('cpu', 'bf16'))
    if torch.cuda.is_available():
        pairs.append(('cuda', 'fp16'))
    return pairs


def deployed_scores(model_path: Path, data: Path, split: str) -> Dict[str, Any]:
    """
    Score a model file on ``split`` as the node runs it, at each of :func:`deployed_precisions`.

    The Segmenter's default path for the device (compiled on the CPU, CUDA
    graphs on CUDA) at that precision; returns the record kept in the file's
    training metadata: the split, its frame count, and per ``'device
    precision'`` the mIoU, global accuracy and per-class IoU.
    """
    record: Dict[str, Any] = {'split': split, 'results': {}}
    for device, precision in deployed_precisions():
        segmenter = Segmenter.from_file(str(model_path), device=device, precision=precision)
        dataset = make_dataset(evaluation_dataset(None, data, segmenter.metadata), data, split)
        scores = evaluate_segmenter(segmenter, dataset)
        summary = scores.as_dict(segmenter.metadata.class_names)
        record['frames'] = len(dataset)
        record['results'][f'{device} {precision}'] = {
            key: summary[key] for key in ('mean_iou', 'global_accuracy', 'per_class_iou')}
        print(f'{split} at {device} {precision} ({segmenter.execution_path}): mIoU '
              f'{100 * scores.mean_iou:.2f}')
    return record


def build_parser() -> argparse.ArgumentParser:
    """Build the ``enet-train`` argument parser with its three commands."""
    from .train import add_train_arguments, train

    parser = argparse.ArgumentParser(prog='enet-train', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    train_parser = add_train_arguments(commands.add_parser('train', help='train a model'))
    train_parser.set_defaults(func=lambda a: (train(a), 0)[1])
    evaluate = commands.add_parser('evaluate', help='score a model file on a split')
    evaluate.add_argument('--model', type=Path, help='model file (default: bundled)')
    evaluate.add_argument('--data', required=True, type=Path)
    evaluate.add_argument('--dataset', choices=DATASETS,
                          help='default: the layout the folder holds (labelmap.txt: voc, '
                               "classes.yaml: plain), else the model's dataset")
    evaluate.add_argument('--void-label', action='append', default=[], metavar='NAME',
                          help='voc: a label map entry that is void, as in training')
    evaluate.add_argument('--split', default='val')
    evaluate.add_argument('--device', default='auto')
    evaluate.add_argument('--precision', default='auto',
                          help="as the node's parameter: auto (fp16 on CUDA; on the CPU bf16 "
                               'where it has AVX-512 BF16 or AMX, else fp32), fp32, fp16, bf16; '
                               'training records val mIoU in fp32')
    evaluate.add_argument('--json', type=Path, help='also write the scores as JSON')
    evaluate.set_defaults(func=_evaluate)
    export = commands.add_parser(
        'export', help='write the model file the node loads, or an ONNX file for other runtimes')
    export.add_argument('source', type=Path,
                        help='best.safetensors of a run, or a checkpoint.pth')
    export.add_argument('--out', type=Path, help='the model file the node loads (.safetensors)')
    export.add_argument('--onnx', type=Path, metavar='FILE',
                        help='also (or only) write the network as ONNX: index-free, BatchNorm '
                             'folded, fp32, the input size, mean/std and class table in its '
                             'metadata; checked with ONNX Runtime against the Segmenter (at '
                             'least 99.9%% of pixels must agree, else nothing is written)')
    export.add_argument('--check-image', action='append', default=[], type=Path,
                        metavar='IMAGE',
                        help='--onnx: check on this frame (repeatable; default two synthetic '
                             'frames)')
    export.add_argument('--record', type=Path,
                        help='JSON object merged into the training record in the file '
                             '(command, machine, wall time: what the run itself cannot know)')
    export.add_argument('--score', type=Path, metavar='DATA',
                        help='dataset root: score the exported file on --score-split as the '
                             'node runs it, at each precision it would run at on this machine '
                             '(CPU fp32, CPU bf16 where the CPU has it, CUDA fp16 where there '
                             'is CUDA), and record that in the file')
    export.add_argument('--score-split', default='val')
    export.set_defaults(func=_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``enet-train``; a bad dataset, model file or device is one error line, status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f'enet-train: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
