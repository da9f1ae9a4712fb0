"""
The benchmark's busy processes (``bench/cpu_load.py``): at the niceness asked for, gone after.

What ``--load N`` and ``--load-nice K`` of ``bench_segmenter.py`` and
``bench_node.py`` stand on; nothing here is timed.
"""

import os
from pathlib import Path
import sys
import time

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))

from cpu_load import BusyLoad  # noqa: E402, I100  (bench/ is not a package)
import pytest  # noqa: E402


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.parametrize('nice', [0, 10])
def test_busy_processes_run_at_the_niceness_asked_and_end_with_the_block(nice):
    """Each busy process spins at the benchmark's niceness plus ``nice``; none outlives it."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    with BusyLoad(2, max_seconds=30.0, nice=nice) as load:
        pids = [child.pid for child in load.children]
        assert len(pids) == 2 and load.running() == 2
        time.sleep(0.3)  # past exec: the niceness is the spinning interpreter's
        assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in pids] == [
            min(own + nice, 19)] * 2
    assert load.running() == 0
    assert not any(_alive(pid) for pid in pids)


def test_busy_processes_cannot_be_given_priority_over_the_benchmark():
    """A negative niceness (which needs privileges, and means something else) is refused."""
    with pytest.raises(ValueError, match='--load-nice'):
        BusyLoad(1, nice=-5)
    with pytest.raises(ValueError, match='--load'):
        BusyLoad(-1)


def test_mode_lists_keep_the_commas_inside_a_modes_brackets():
    """``--modes 'a [X=1,threads=2],b'`` names two modes, the first with two settings."""
    from bench_load import split_mode, split_mode_list  # noqa: I100

    modes = split_mode_list('torch default [GOMP_SPINCOUNT=1000,threads=3], node default,')
    assert modes == ['torch default [GOMP_SPINCOUNT=1000,threads=3]', 'node default']
    assert split_mode(modes[0]) == ('torch default', {'GOMP_SPINCOUNT': '1000', 'threads': '3'})
    assert split_mode_list('') == []
