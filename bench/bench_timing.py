"""
The benchmark's timing harness: modes round-robin in blocks, idle and beside busy processes.

:func:`run_size` builds the modes of one frame size (``segmenter_modes.py``),
warms each up, then times whole frames and bare forwards in turns of
``--block`` frames per mode, so load from other processes hits every mode
alike and the ratios between modes come from the same run. With ``--load N``
(and ``--same-process``) it then times whole frames again beside N busy
processes (``cpu_load.py``). :func:`summarise` makes one row per mode.
"""

import argparse
import statistics
from typing import Callable, Dict, List, Optional, Tuple

from cpu_load import BusyLoad
from enet_ros.model_file import LoadedModel
import numpy as np
from segmenter_modes import build_modes, Mode, PREVIOUS_DEFAULT
import torch


def run_size(loaded_for: Callable[[Tuple[int, int]], LoadedModel], device: torch.device,
             frame_size: Tuple[int, int], net_size: Optional[Tuple[int, int]],
             args: argparse.Namespace) -> List[Dict[str, object]]:
    """Benchmark every mode at one frame size; return one row per mode."""
    net_size = net_size or frame_size
    print(f'{frame_size[0]}x{frame_size[1]} frames, network input {net_size[0]}x{net_size[1]}:',
          flush=True)
    wanted = [m.strip() for m in args.modes.split(',')] if args.modes else None
    modes = build_modes(loaded_for(net_size), device, frame_size, net_size, wanted, args)
    for mode in modes:
        mode.time(mode.frame, args.warmup, [])
        mode.time(mode.forward, max(1, args.warmup // 2), [])
    forward_frames = args.forward_frames if args.forward_frames is not None else args.frames
    done = 0
    while done < max(args.frames, forward_frames):
        for mode in modes:
            if done < args.frames:
                mode.time(mode.frame, min(args.block, args.frames - done), mode.frame_ms,
                          mode.frame_cpu_ms)
        for mode in modes:
            if done < forward_frames:
                mode.time(mode.forward, min(args.block, forward_frames - done),
                          mode.forward_ms)
        done += args.block
    if args.load:
        with BusyLoad(args.load, args.load_seconds, args.load_nice):
            for done in range(0, args.frames, args.block):
                for mode in modes:
                    mode.time(mode.frame, min(args.block, args.frames - done), mode.loaded_ms,
                              mode.loaded_cpu_ms)
            for mode in modes:
                mode.loaded_state = mode.state() if mode.state else None
    reference = modes[0]
    previous = next((mode for mode in modes if mode.name == PREVIOUS_DEFAULT), None)
    gflop = forward_gflop(loaded_for(net_size), net_size)
    rows = []
    for mode in modes:
        row = summarise(mode, reference, frame_size, net_size)
        row['previous_default_speedup'] = (_median(previous.frame_ms) / row['median_ms']
                                           if previous else float('nan'))
        row['forward_gflops'] = gflop / row['forward_median_ms'] * 1e3
        row['forward_peak_percent'] = 100 * row['forward_gflops'] / args.peak_gflops
        rows.append(row)
    return rows


def forward_gflop(loaded: LoadedModel, net_size: Tuple[int, int]) -> float:
    """GFLOP of one forward at ``net_size`` (2 per multiply-accumulate), torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    width, height = net_size
    network = loaded.build()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def _median(values: List[float]) -> float:
    return statistics.median(values) if values else float('nan')


def summarise(mode: Mode, reference: Mode, frame_size, net_size) -> Dict[str, object]:
    """One row: medians, p90, frames/s, CPU time, peak memory, ratios to the reference."""
    median = _median(mode.frame_ms)
    forward = _median(mode.forward_ms)
    return {
        'frame': f'{frame_size[0]}x{frame_size[1]}',
        'network': f'{net_size[0]}x{net_size[1]}',
        'mode': mode.name,
        'path': mode.path,
        'frames': len(mode.frame_ms),
        'median_ms': median,
        'p90_ms': float(np.percentile(mode.frame_ms, 90)) if mode.frame_ms else float('nan'),
        'fps': 1e3 / median if median else float('nan'),
        'cpu_ms': _median(mode.frame_cpu_ms),
        'forward_median_ms': forward,
        'forward_p90_ms': (float(np.percentile(mode.forward_ms, 90))
                           if mode.forward_ms else float('nan')),
        'peak_gpu_mib': mode.peak_mib,
        'speedup': _median(reference.frame_ms) / median if median else float('nan'),
        'forward_speedup': _median(reference.forward_ms) / forward if forward else float('nan'),
        'setup_s': mode.setup_s,
        'reference': reference.name,
        'loaded_median_ms': _median(mode.loaded_ms) if mode.loaded_ms else None,
        'loaded_p90_ms': float(np.percentile(mode.loaded_ms, 90)) if mode.loaded_ms else None,
        'loaded_cpu_ms': _median(mode.loaded_cpu_ms) if mode.loaded_cpu_ms else None,
        'loaded_state': mode.loaded_state,
    }
