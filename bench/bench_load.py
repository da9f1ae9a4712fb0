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

``--repeat R`` runs all the modes R times in turns (mode A, B, C, then A, B, C
again), each run of a mode in a fresh process; a row then holds the medians
over the runs, with each run's figures and ratios under ``runs`` and the
median of the per-run ratios (modes side by side in time, the robust A/B on
a machine whose background load changes) under ``run_...``.
"""

import argparse
import json
import os
from pathlib import Path
import statistics
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


def split_mode_list(text: str) -> List[str]:
    """Split ``'a [X=1,threads=2],b'`` into ``['a [X=1,threads=2]', 'b']`` at outer commas."""
    modes, depth, current = [], 0, []
    for char in text or '':
        depth += {'[': 1, ']': -1}.get(char, 0)
        if char == ',' and depth == 0:
            modes.append(''.join(current))
            current = []
        else:
            current.append(char)
    modes.append(''.join(current))
    return [mode.strip() for mode in modes if mode.strip()]


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
               '--load-seconds', str(args.load_seconds), '--load-nice', str(args.load_nice),
               '--peak-gflops', str(args.peak_gflops),
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
    """
    Run each mode in its own process, ``args.repeat`` times in turns; return (rows, machines).

    Turns (all modes, then all modes again) put the modes side by side in
    time, so a change in the machine's background load hits them alike. One
    row per mode and size: the medians over the runs of each figure, with
    every run's figures under ``runs``.
    """
    per_run: List[List[Dict[str, object]]] = []
    machines = []
    repeat = max(1, getattr(args, 'repeat', 1))
    with tempfile.TemporaryDirectory(prefix='bench_load_') as folder:
        for run in range(repeat):
            rows = []
            for index, mode in enumerate(modes):
                json_path = str(Path(folder) / f'{run}-{index}.json')
                command, env = child_command(script, args, mode, json_path)
                turn = f' (run {run + 1} of {repeat})' if repeat > 1 else ''
                print(f'== {mode}: a process of its own{turn}', flush=True)
                done = subprocess.run(command, env=env, check=False)
                if done.returncode != 0 or not Path(json_path).exists():
                    print(f'== {mode}: failed (exit code {done.returncode})', flush=True)
                    continue
                result = json.loads(Path(json_path).read_text())
                for row in result['rows']:
                    row['mode'] = mode
                    rows.append(row)
                machines.append({'mode': mode, 'run': run + 1, **result['machine']})
            add_load_ratios(rows)
            per_run.append(rows)
    return median_rows(per_run), machines


#: Figures of a row that :func:`median_rows` takes the median of over runs.
RUN_FIGURES = ('median_ms', 'p90_ms', 'fps', 'cpu_ms', 'forward_median_ms', 'forward_p90_ms',
               'loaded_median_ms', 'loaded_p90_ms', 'loaded_cpu_ms', 'setup_s')
#: Texts of a row kept for each run (what ran; a Segmenter's state after the loaded frames).
RUN_TEXTS = ('path', 'loaded_state')
#: Ratios of each run (modes side by side in time) whose median over runs is kept too.
RUN_RATIOS = ('idle_x_ref', 'loaded_median_x_ref', 'loaded_p90_x_ref', 'loaded_x_idle')


def median_rows(per_run: List[List[Dict[str, object]]]) -> List[Dict[str, object]]:
    """One row per (size, mode): medians over the runs; each run's rows under ``runs``."""
    grouped: Dict[Tuple[str, str, str], List[Dict[str, object]]] = {}
    for rows in per_run:
        for row in rows:
            grouped.setdefault((row['frame'], row['network'], row['mode']), []).append(row)
    result = []
    for runs in grouped.values():
        row = dict(runs[0])
        row.pop('load_reference', None)
        for key in RUN_FIGURES + RUN_RATIOS:
            values = [r.get(key) for r in runs if r.get(key) is not None]
            figure = statistics.median(values) if values else None
            row[key if key in RUN_FIGURES else f'run_{key}'] = figure
        row['repeats'] = len(runs)
        row['runs'] = [{key: r.get(key) for key in RUN_TEXTS + RUN_FIGURES + RUN_RATIOS}
                       for r in runs]
        result.append(row)
    return result


def run_and_report(script: str, args: argparse.Namespace, modes: List[str]) -> int:
    """Run each mode in a process of its own (see run_isolated); print and write the table."""
    from bench_output import write_json

    rows, machines = run_isolated(script, args, modes)
    if not rows:
        print('bench_segmenter: no mode produced figures', file=sys.stderr)
        return 1
    add_load_ratios(rows)
    repeat = max(1, getattr(args, 'repeat', 1))
    print()
    print(f'each mode in a process of its own; {args.frames} frames idle'
          + (f', then {args.frames} beside {args.load} busy process(es)' if args.load else '')
          + (f'; {repeat} runs in turns, medians over the runs' if repeat > 1 else '')
          + "; ratios over the first mode's idle median")
    for machine in machines:
        print(f'  {machine["mode"]} (run {machine["run"]}): '
              f'OMP_WAIT_POLICY={machine["OMP_WAIT_POLICY"]} '
              f'GOMP_SPINCOUNT={machine["GOMP_SPINCOUNT"]} '
              f'ENET_ROS_OPENMP_WAIT={machine.get("ENET_ROS_OPENMP_WAIT", "(unset)")} '
              f'threads={machine["torch_threads"]} '
              f'load average {machine["load_average_start"]} -> {machine["load_average_end"]}')
    for row in rows:
        print(f'  {row["mode"]}: {row["path"]}')
        states = [run.get('loaded_state') for run in row.get('runs', [])]
        if any(states):
            print(f'    after the loaded frames: {"; ".join(str(s) for s in states)}')
    print()
    print(format_load_markdown(rows, args.load))
    if repeat > 1:
        print()
        print(format_run_ratios(rows))
    if args.json:
        write_json(args.json, {'machines': machines, 'args': vars(args), 'rows': rows})
    return 0


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


def format_run_ratios(rows: List[Dict[str, object]]) -> str:
    """Each run's ratios (modes side by side in time), median over runs and the range."""
    lines = ['| frame = network | mode | idle / ref idle | loaded median / ref idle | '
             'loaded p90 / ref idle | (median over runs; min-max) |',
             '| --- | --- | ---: | ---: | ---: | --- |']
    for row in rows:
        size = (row['frame'] if row['frame'] == row['network']
                else f'{row["frame"]} -> {row["network"]}')
        cells, spans = [], []
        for key in ('idle_x_ref', 'loaded_median_x_ref', 'loaded_p90_x_ref'):
            values = [r[key] for r in row.get('runs', []) if r.get(key) is not None]
            cells.append(_fmt(row.get(f'run_{key}'), '.2f'))
            spans.append(f'{min(values):.2f}-{max(values):.2f}' if values else '-')
        lines.append(f'| {size} | {row["mode"]} | {" | ".join(cells)} | {"; ".join(spans)} |')
    return '\n'.join(lines)
