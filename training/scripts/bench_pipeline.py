#!/usr/bin/env python3
"""
Time training steps with the loader pipeline against the device pipeline, in one process.

Each trial builds the run as ``enet-train train`` does (the recipe flags
below, plus ``--pipeline``; the loader trials with ``--compile off``, as
training ran before the device pipeline) and trains ``--iterations`` steps of one epoch,
the loader and device trials taking turns, so both see the same machine
load. It prints, per pipeline, the median seconds per step, the epoch that
implies (steps per epoch x that), the one-time set-up (the device pipeline
decodes every frame once) and the ratio. ``--json`` writes the figures.

    python training/scripts/bench_pipeline.py --data ../shared/data/camvid --device cpu

Any ``enet-train train`` flag after ``--`` is passed on (default: the round-7
recipe: batch 5, lr 5e-4 poly, EMA 0.999, ce+lovasz, scale 0.75-1.5, seed 9).
"""

import argparse
import dataclasses
import json
from pathlib import Path
import statistics
import sys
import tempfile
import time

from enet_training.distributed import init_distributed, RunLog
from enet_training.run_setup import seed_epoch, setup_run
from enet_training.train import add_train_arguments, compile_network, Progress, train_one_epoch

RECIPE = ['--batch-size', '5', '--lr', '5e-4', '--lr-schedule', 'poly', '--workers', '1',
          '--seed', '9', '--scale', '0.75', '1.5', '--ema', '0.999', '--loss', 'ce+lovasz',
          '--epochs', '300']


def trial(data: Path, device: str, pipeline: str, iterations: int, extra, out: Path):
    """Return (set-up seconds, [seconds of each step after the first], steps per epoch)."""
    argv = ['--data', str(data), '--out', str(out), '--device', device, '--pipeline', pipeline,
            '--progress', 'off', '--tensorboard', 'off', *RECIPE, *extra]
    if pipeline == 'loader':
        argv += ['--compile', 'off']  # the pipeline as it was: no compiled forward
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(argv)
    env = init_distributed(args.device, False)
    start = time.perf_counter()
    run = setup_run(args, env)
    compile_network(run, args)
    seed_epoch(run, 0)
    epoch_steps = len(run.loader)
    iterator_setup = time.perf_counter() - start
    stamps = []

    class Stamp(Progress):
        def step(self, *a, **k):
            if env.device.type == 'cuda':
                import torch
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    run.step = dataclasses.replace(run.step, iterations=iterations)
    first = time.perf_counter()
    train_one_epoch(run.network, run.criterion, run.optimizer, run.scaler, run.loader, 0,
                    run.step, Stamp(RunLog(None), 1, 0, iterations, 10 ** 9, 1), False, run.ema)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    # The first step carries the loader's start (workers, first batch): count it in set-up.
    return iterator_setup + (stamps[0] - first), steps, epoch_steps


def main() -> int:
    """Run the trials and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, required=True)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--iterations', type=int, default=12, help='steps per trial')
    parser.add_argument('--trials', type=int, default=3, help='trials per pipeline')
    parser.add_argument('--json', type=Path)
    parser.add_argument('extra', nargs='*', help='more enet-train train flags (after --)')
    args = parser.parse_args()
    results = {'loader': {'setup': [], 'steps': []}, 'device': {'setup': [], 'steps': []}}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.trials):
            for pipeline in ('loader', 'device'):
                setup, steps, epoch_steps = trial(args.data, args.device, pipeline,
                                                  args.iterations, args.extra,
                                                  Path(folder) / f'{pipeline}{index}')
                results[pipeline]['setup'].append(setup)
                results[pipeline]['steps'].extend(steps)
                print(f'trial {index + 1} {pipeline}: set-up {setup:.2f} s, median step '
                      f'{statistics.median(steps):.3f} s', file=sys.stderr, flush=True)
    summary = {}
    for pipeline, figures in results.items():
        step = statistics.median(figures['steps'])
        summary[pipeline] = {'median_step_s': step, 'steps_per_epoch': epoch_steps,
                             'epoch_s': step * epoch_steps,
                             'setup_s': statistics.median(figures['setup']),
                             'steps': figures['steps']}
        print(f'{pipeline:7s} median step {step:.3f} s, epoch ({epoch_steps} steps) '
              f'{step * epoch_steps:.1f} s, set-up {summary[pipeline]["setup_s"]:.2f} s')
    ratio = summary['loader']['median_step_s'] / summary['device']['median_step_s']
    print(f"device pipeline: {ratio:.2f}x the loader's steps per second")
    summary['speedup'] = ratio
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
