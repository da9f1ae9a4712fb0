"""Test helper: ``enet-train train`` flags parsed as the command line parses them."""

import argparse

from enet_training.train import add_train_arguments


def parse_train_flags(*argv: str, data: str = 'unused',
                      out: str = 'unused') -> argparse.Namespace:
    """Parse ``enet-train train`` flags after ``--data DATA --out OUT`` (placeholders default)."""
    return add_train_arguments(argparse.ArgumentParser()).parse_args(
        ['--data', data, '--out', out, *argv])
