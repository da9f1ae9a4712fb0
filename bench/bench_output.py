"""
The benchmark's output: the machine it ran on, the text and Markdown tables, the JSON file.

Rows come from ``bench_timing.summarise``; the idle / loaded table of
``--load N`` is ``bench_load.format_load_markdown``.
"""

import json
import math
import os
from pathlib import Path
import platform
from typing import Dict, List

from enet_ros.segmenter import cpu_supports_bf16
import onnx_peers
import torch


def machine_info(device: torch.device) -> Dict[str, object]:
    """Describe the machine the numbers were measured on."""
    cpu = platform.processor() or 'unknown CPU'
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    info = {'cpu': cpu, 'cores': os.cpu_count(), 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'python': platform.python_version(),
            'cpu_bf16': cpu_supports_bf16(),
            'OMP_WAIT_POLICY': os.environ.get('OMP_WAIT_POLICY', '(unset)'),
            'GOMP_SPINCOUNT': os.environ.get('GOMP_SPINCOUNT', '(unset)'),
            'ENET_ROS_OPENMP_WAIT': os.environ.get('ENET_ROS_OPENMP_WAIT', '(unset)'),
            'onnxruntime': onnx_peers.onnxruntime_version(),
            'openvino': onnx_peers.openvino_version(),
            'load_average_start': os.getloadavg()}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
        info['cudnn'] = torch.backends.cudnn.version()
    return info


def _without_nan(value):
    """Return ``value`` with every NaN float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def format_table(rows: List[Dict[str, object]]) -> str:
    """Plain-text table of the rows."""
    width = max([len('mode')] + [len(str(row['mode'])) for row in rows])
    header = (f'{"frame":>10} {"network":>10} {"mode":<{width}} {"median ms":>10} {"p90 ms":>8} '
              f'{"fps":>7} {"cpu ms":>8} {"fwd ms":>8} {"fwd p90":>8} {"GFLOP/s":>8} '
              f'{"% peak":>7} {"GPU MiB":>8} {"x ref":>6} {"fwd x":>6} {"x prev":>7} '
              f'{"setup s":>8}')
    lines = [header, '-' * len(header)]
    for row in rows:
        peak = '-' if row['peak_gpu_mib'] is None else f'{row["peak_gpu_mib"]:.0f}'
        lines.append(
            f'{row["frame"]:>10} {row["network"]:>10} {row["mode"]:<{width}} '
            f'{row["median_ms"]:>10.1f} {row["p90_ms"]:>8.1f} {row["fps"]:>7.1f} '
            f'{row["cpu_ms"]:>8.1f} {row["forward_median_ms"]:>8.1f} '
            f'{row["forward_p90_ms"]:>8.1f} {row["forward_gflops"]:>8.1f} '
            f'{row["forward_peak_percent"]:>7.1f} {peak:>8} {row["speedup"]:>6.2f} '
            f'{row["forward_speedup"]:>6.2f} {row["previous_default_speedup"]:>7.2f} '
            f'{row["setup_s"]:>8.1f}')
    return '\n'.join(lines)


def format_markdown(rows: List[Dict[str, object]]) -> str:
    """Format the rows as a Markdown table (for the README)."""
    lines = ['| frame = network | mode | median ms | p90 ms | frames/s | CPU ms | forward ms | '
             'GFLOP/s | % peak | x ref (frame / forward) | x prev | set-up s |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for row in rows:
        size = (row['frame'] if row['frame'] == row['network']
                else f'{row["frame"]} -> {row["network"]}')
        lines.append(
            f'| {size} | {row["mode"]} | {row["median_ms"]:.1f} | {row["p90_ms"]:.1f} | '
            f'{row["fps"]:.1f} | {row["cpu_ms"]:.1f} | {row["forward_median_ms"]:.1f} | '
            f'{row["forward_gflops"]:.0f} | {row["forward_peak_percent"]:.0f} | '
            f'{row["speedup"]:.2f} / {row["forward_speedup"]:.2f} | '
            f'{row["previous_default_speedup"]:.2f} | {row["setup_s"]:.1f} |')
    return '\n'.join(lines)


def write_json(path: str, result: Dict[str, object]) -> None:
    """Write ``result`` to ``path`` as strict JSON (NaN becomes null)."""
    Path(path).write_text(json.dumps(_without_nan(result), indent=2, allow_nan=False))
