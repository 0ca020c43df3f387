"""``diffprune`` command line: thin wrappers over the ``core`` facade."""
from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    """argparse exits with code 2 and a one-line message on bad flags."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"diffprune: error: {message}\n")


def _cmd_train_base(args) -> int:
    from .training import TrainConfig, train_base

    config = TrainConfig(
        output_dir=args.output_dir, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, checkpoint_minutes=args.checkpoint_minutes,
        num_threads=args.threads,
    )
    path = train_base(config, log=lambda line: print(line, flush=True))
    print(f"exported EMA pipeline to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffprune", description="DiffPrune Studio: prune diffusion models and measure the result.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train-base", help="train the embedded default DDPM on Fashion-MNIST")
    train.add_argument("--output-dir", default="runs/train-base")
    train.add_argument("--steps", type=int, default=8000)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--checkpoint-minutes", type=float, default=5.0)
    train.add_argument("--threads", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_cmd_train_base)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        print(f"diffprune: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
