"""
The reports of both bag evaluations: their common head, the terminal table, JSON and PNG files.

A report is plain data (a dict, written as JSON by :func:`write_json`); both
tools start it with :func:`report_head` and print it with :func:`format_table`.

The PNG report (:func:`write_report`, ``evaluate_bag --report``) shows example
frames side by side and a per-class IoU chart. Each example row shows the
camera frame, the prediction and the ground truth in the model's palette (void
black), and the drivable area: the frame dimmed, with correctly predicted
drivable pixels green, false ones red and missed ones blue.
Rendered with matplotlib's Agg backend (no display needed).
"""

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .bag_io import TopicInfo
from .ground_truth import GroundTruth
from .outputs import write_text
from .scoring import class_tables
from .. import masks
from ..model_file import ModelMetadata

HIT, FALSE, MISSED = (40, 200, 40), (230, 40, 40), (40, 90, 255)


def report_head(tool: str, bag: Path, image: TopicInfo, truth: GroundTruth,
                model: str) -> Dict[str, Any]:
    """Return the first keys of either tool's report: what was evaluated, against what, how."""
    return {'tool': tool, 'bag': str(bag), 'image_topic': image.name,
            'image_type': image.msgtype, 'ground_truth': truth.describe(), 'model': model}


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented JSON, creating the folder; OutputWriteError on failure."""
    write_text(path, json.dumps(report, indent=2) + '\n', '--json')


def _percent(value: Optional[float]) -> str:
    return '   n/a' if value is None else f'{100.0 * value:6.2f}'


def _ms(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.1f}'


def format_table(report: Mapping[str, Any]) -> str:
    """Format the report of either tool as a plain-text table for the terminal."""
    lines = [f"{report['tool']}: {report['bag']}",
             f"  frames: {report['image_topic']} ({report['image_type']}); "
             f"ground truth: {report['ground_truth']}",
             f"  model: {report['model']}"]
    frames = report['frames']
    counts = ', '.join(f'{key} {value}' for key, value in frames.items()
                       if key != 'skipped_reasons')
    lines.append(f'  frames {counts}')
    for reason, count in frames.get('skipped_reasons', {}).items():
        lines.append(f'    skipped {count}: {reason}')
    accuracy = report.get('accuracy')
    if accuracy and accuracy['frames']:
        width = max(len(name) for name in accuracy['per_class_iou'])
        width = max(width, len('drivable IoU'), len('class-avg accuracy'))
        lines.append(f"  {'class':<{width}}  IoU %  acc %")
        for name, iou in accuracy['per_class_iou'].items():
            lines.append(f'  {name:<{width}} {_percent(iou)} '
                         f"{_percent(accuracy['per_class_accuracy'][name])}")
        lines.append(f"  {'mIoU':<{width}} {_percent(accuracy['mean_iou'])}")
        lines.append(f"  {'class-avg accuracy':<{width}} "
                     f"{_percent(accuracy['mean_class_accuracy'])}")
        lines.append(f"  {'global accuracy':<{width}} {_percent(accuracy['global_accuracy'])}")
        if accuracy.get('unpredicted_pixels'):
            lines.append(f"  {accuracy['unpredicted_pixels']} labelled pixels were published "
                         'as no class (void: min_confidence), counted as misses')
        drivable = accuracy['drivable']
        lines.append(f"  {'drivable IoU':<{width}} {_percent(drivable['iou'])}  "
                     f"({', '.join(drivable['classes']) or 'no classes'})")
    else:
        lines.append('  accuracy: no frame had ground truth')
    for key, title in (('latency', 'latency (decode + segment)'),
                       ('segment_latency', 'latency (segment only)'),
                       ('end_to_end_latency', 'end-to-end latency')):
        if key in report:
            latency = report[key]
            lines.append(f"  {title} ms: p50 {_ms(latency['p50_ms'])}  "
                         f"p90 {_ms(latency['p90_ms'])}  p99 {_ms(latency['p99_ms'])}  "
                         f"(n={latency['count']})")
    for key, title in (('fps', 'frames per second'), ('output_rate_hz', 'output rate Hz'),
                       ('input_rate_hz', 'input rate Hz')):
        if report.get(key) is not None:
            lines.append(f'  {title}: {report[key]:.2f}')
    lines += [f'  warning: {warning}' for warning in report.get('warnings') or ()]
    return '\n'.join(lines)


@dataclass(frozen=True)
class ReportFrame:
    """One example: HxWx3 uint8 RGB frame, HxW uint8 prediction and ground truth."""

    index: int
    stamp_ns: int
    image: np.ndarray
    prediction: np.ndarray
    truth: Optional[np.ndarray]


def drivable_errors(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray,
                    drivable: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """
    HxWx3 uint8 RGB: ``image`` dimmed, drivable hits green, false red, missed blue.

    ``drivable`` and ``valid`` are 256-entry boolean tables over class ids;
    pixels whose ground truth is not valid (void) show the dimmed frame only.
    """
    out = (image // 2).astype(np.uint8)
    predicted = drivable[prediction]
    ok = valid[truth]
    actual = drivable[truth] & ok
    out[predicted & actual] = HIT
    out[predicted & ~actual & ok] = FALSE
    out[~predicted & actual] = MISSED
    return out


def write_report(path: Path, frames: Sequence[ReportFrame], accuracy: Mapping[str, Any],
                 metadata: ModelMetadata, title: str = '') -> Path:
    """Render ``frames`` and the per-class IoU of ``accuracy`` (Scoreboard.as_dict) to a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    palette = masks.palette_lut(metadata.colors)
    drivable_names = accuracy['drivable']['classes']
    drivable, valid = class_tables(metadata, drivable_names)

    rows = len(frames)
    figure = plt.figure(figsize=(14, 2.8 * rows + 4.5), dpi=90)
    grid = figure.add_gridspec(rows + 1, 4, height_ratios=[2.8] * rows + [4.5])
    columns = ('camera', 'prediction', 'ground truth',
               f"drivable ({', '.join(drivable_names)}): hit / false / missed")
    for row, frame in enumerate(frames):
        truth = frame.truth
        panels = [frame.image, masks.colorize(frame.prediction, palette),
                  masks.colorize(truth, palette) if truth is not None else None,
                  drivable_errors(frame.image, frame.prediction, truth, drivable, valid)
                  if truth is not None else None]
        for column, panel in enumerate(panels):
            axes = figure.add_subplot(grid[row, column])
            axes.set_axis_off()
            if panel is None:
                axes.text(0.5, 0.5, 'no ground truth', ha='center', va='center')
            else:
                axes.imshow(panel, interpolation='nearest')
            if row == 0:
                axes.set_title(columns[column], fontsize=10)
            if column == 0:
                axes.text(0, -0.02, f'frame {frame.index}  stamp {frame.stamp_ns}',
                          transform=axes.transAxes, va='top', fontsize=8)
    _iou_chart(figure.add_subplot(grid[rows, :]), accuracy, metadata)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.98) if title else None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _iou_chart(axes: Any, accuracy: Mapping[str, Any], metadata: ModelMetadata) -> None:
    per_class: Dict[str, Optional[float]] = accuracy['per_class_iou']
    names = list(per_class)
    values = [100.0 * v if v is not None else 0.0 for v in per_class.values()]
    colors = [np.asarray(c) / 255.0 for c in metadata.colors]
    positions = np.arange(len(names))
    axes.bar(positions, values, color=colors, edgecolor='black', linewidth=0.6)
    for position, value in zip(positions, per_class.values()):
        label = 'n/a' if value is None else f'{100.0 * value:.1f}'
        axes.text(position, (100.0 * value if value else 0.0) + 1.5, label, ha='center',
                  fontsize=8)
    mean = accuracy.get('mean_iou')
    drivable = accuracy['drivable']['iou']
    if mean is not None:
        axes.axhline(100.0 * mean, color='black', linestyle='--', linewidth=1)
    axes.set_xticks(positions)
    axes.set_xticklabels(names, rotation=30, ha='right', fontsize=9)
    axes.set_ylim(0, 105)
    axes.set_ylabel('IoU %')
    summary = [f"{accuracy['frames']} frames"]
    for key, text in (('mean_iou', 'mIoU'), ('mean_class_accuracy', 'class-avg acc'),
                      ('global_accuracy', 'global acc')):
        if accuracy.get(key) is not None:
            summary.append(f'{text} {100.0 * accuracy[key]:.1f}%')
    if drivable is not None:
        summary.append(f'drivable IoU {100.0 * drivable:.1f}%')
    axes.set_title('per-class IoU (dashed: mIoU) -- ' + ', '.join(summary), fontsize=10)
