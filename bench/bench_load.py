"""
``bench_segmenter.py --load N``: each mode in its own process, idle and beside N busy processes.

What a vehicle's CPU sees: drivers, localisation and planning keep its cores
busy. With ``--load N`` the benchmark times every mode's whole frames twice,
first idle, then beside N busy processes (:class:`cpu_load.BusyLoad`, started
and stopped by the benchmark, at most ``--load-seconds`` each), and prints
median and p90 side by side. Unless ``--same-process``, each mode runs alone
in a process of its own (this script runs ``bench_segmenter.py --modes M``
per mode), so no runtime's thread pool (OpenMP, OpenVINO's TBB, ONNX
Runtime's) waits on another's.

A mode may carry its process's environment and threads in brackets, e.g.
``torch default [OMP_WAIT_POLICY=PASSIVE]``, ``torch default [threads=1]``,
``torch default [GOMP_SPINCOUNT=10000]``; ``node default`` is ``default`` in
the environment the node's executables set before torch loads
(:func:`enet_ros.inference.cpu_runtime.apply_process_defaults`). The ratio
columns divide by the first mode's idle median (put today's default first:
``torch default``).
"""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

#: ``default`` in the node's process environment (needs a process of its own).
NODE_DEFAULT = 'node default'


def split_mode(text: str) -> Tuple[str, Dict[str, str]]:
    """``'torch default [A=1,threads=2]'`` to ``('torch default', {'A': '1', 'threads': '2'})``."""
    text = text.strip()
    if not text.endswith(']') or '[' not in text:
        return text, {}
    base, _, inner = text[:-1].partition('[')
    settings = {}
    for item in inner.split(','):
        key, sep, value = item.strip().partition('=')
        if not sep or not key:
            raise ValueError(f"mode '{text}': expected [NAME=VALUE,...] after the mode name")
        settings[key.strip()] = value.strip()
    return base.strip(), settings


def base_mode(text: str) -> str:
    """Return the mode name without its bracketed settings (``node default``: ``default``)."""
    base = split_mode(text)[0]
    return 'default' if base == NODE_DEFAULT else base


def needs_own_process(modes: List[str]) -> bool:
    """Whether any mode sets its process's environment or threads (or is ``node default``)."""
    return any(split_mode(m)[1] or split_mode(m)[0] == NODE_DEFAULT for m in modes)


def child_command(script: str, args: argparse.Namespace, mode: str, json_path: str
                  ) -> Tuple[List[str], Dict[str, str]]:
    """Return the command and environment that run ``mode`` alone, idle then loaded."""
    from enet_ros.inference.cpu_runtime import apply_process_defaults

    base, settings = split_mode(mode)
    threads = settings.pop('threads', None) or (str(args.threads) if args.threads else None)
    env = dict(os.environ)
    if base == NODE_DEFAULT:
        apply_process_defaults(env)
        base = 'default'
    env.update(settings)
    command = [sys.executable, script, '--device', args.device, '--sizes', args.sizes,
               '--frames', str(args.frames), '--warmup', str(args.warmup),
               '--block', str(args.block), '--load', str(args.load),
               '--load-seconds', str(args.load_seconds), '--peak-gflops', str(args.peak_gflops),
               '--modes', base, '--same-process', '--json', json_path]
    if args.forward_frames is not None:
        command += ['--forward-frames', str(args.forward_frames)]
    for flag, value in (('--input-size', args.input_size), ('--model', args.model),
                        ('--threads', threads)):
        if value:
            command += [flag, str(value)]
    if args.ort_spin:
        command.append('--ort-spin')
    return command, env


def run_isolated(script: str, args: argparse.Namespace, modes: List[str]
                 ) -> Tuple[List[Dict[str, object]], List[Dict[str, object]]]:
    """Run each mode in its own process; return (rows, each process's machine info)."""
    rows, machines = [], []
    with tempfile.TemporaryDirectory(prefix='bench_load_') as folder:
        for index, mode in enumerate(modes):
            json_path = str(Path(folder) / f'{index}.json')
            command, env = child_command(script, args, mode, json_path)
            print(f'== {mode}: a process of its own', flush=True)
            done = subprocess.run(command, env=env, check=False)
            if done.returncode != 0 or not Path(json_path).exists():
                print(f'== {mode}: failed (exit code {done.returncode})', flush=True)
                continue
            result = json.loads(Path(json_path).read_text())
            for row in result['rows']:
                row['mode'] = mode
                rows.append(row)
            machines.append({'mode': mode, **result['machine']})
    return rows, machines


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return value / reference if value is not None and reference else None


def add_load_ratios(rows: List[Dict[str, object]]) -> None:
    """Add ratios to the first mode's idle median of the same size (the reference)."""
    reference: Dict[Tuple[str, str], float] = {}
    for row in rows:
        key = (row['frame'], row['network'])
        reference.setdefault(key, row['median_ms'])
        ref = reference[key]
        row['load_reference'] = ref
        row['idle_x_ref'] = _ratio(row['median_ms'], ref)
        row['loaded_median_x_ref'] = _ratio(row.get('loaded_median_ms'), ref)
        row['loaded_p90_x_ref'] = _ratio(row.get('loaded_p90_ms'), ref)
        row['loaded_x_idle'] = _ratio(row.get('loaded_median_ms'), row['median_ms'])


def _fmt(value: Optional[float], spec: str = '.1f') -> str:
    return '-' if value is None else format(value, spec)


def format_load_markdown(rows: List[Dict[str, object]], load: int) -> str:
    """Idle and loaded side by side, as Markdown; ratios over the first mode's idle median."""
    lines = [f'| frame = network | mode | idle median ms | idle p90 | loaded ({load} busy) '
             'median ms | loaded p90 | loaded / own idle | idle / ref idle | loaded median / '
             'ref idle | loaded p90 / ref idle |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for row in rows:
        size = (row['frame'] if row['frame'] == row['network']
                else f'{row["frame"]} -> {row["network"]}')
        lines.append(
            f'| {size} | {row["mode"]} | {_fmt(row["median_ms"])} | {_fmt(row["p90_ms"])} | '
            f'{_fmt(row.get("loaded_median_ms"))} | {_fmt(row.get("loaded_p90_ms"))} | '
            f'{_fmt(row.get("loaded_x_idle"), ".2f")} | {_fmt(row.get("idle_x_ref"), ".2f")} | '
            f'{_fmt(row.get("loaded_median_x_ref"), ".2f")} | '
            f'{_fmt(row.get("loaded_p90_x_ref"), ".2f")} |')
    return '\n'.join(lines)
