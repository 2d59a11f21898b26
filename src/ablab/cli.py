"""The ``ablab`` command: ``ablab train [overrides]``, ``ablab show-batch [overrides]``.

Sub-commands take the same Hydra overrides as training, composed from the same ``conf/``.
"""

from __future__ import annotations

import argparse
import sys

from ablab.errors import ConfigError


def show_batch(argv: list[str]) -> None:
    """Save one training batch of the configured data as a labelled PNG grid."""
    parser = argparse.ArgumentParser(
        prog="ablab show-batch", description="Save one training batch as a labelled image grid."
    )
    parser.add_argument("--out", default="batch.png", help="PNG file to write (default: batch.png)")
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument(
        "--augmented", action="store_true", help="apply the configured augmentation first"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=cifar10")
    args = parser.parse_args(argv)

    from hydra.utils import instantiate

    from ablab.config import composed
    from ablab.data.preview import save_batch_grid
    from ablab.training.run import as_config_error

    with composed(args.overrides) as cfg:
        try:
            datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
            datamodule.prepare_data()
            datamodule.setup("fit")
        except Exception as err:
            raise as_config_error(err) from err
    x, y = next(iter(datamodule.train_dataloader()))
    if args.augmented:
        x = datamodule.augmentation(x)
    path = save_batch_grid(x, y, datamodule.class_names, args.out, args.max_images)
    print(f"saved {min(len(x), args.max_images)} images of {datamodule.name} to {path}")


def train(argv: list[str]) -> None:
    """Train and track one run (or a ``-m`` sweep): the Hydra entry point with these arguments."""
    from ablab import train as entry

    sys.argv = [f"{sys.argv[0]} train", *argv]
    entry.main()


COMMANDS = {"train": train, "show-batch": show_batch}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<11} {fn.__doc__.splitlines()[0]}" for name, fn in COMMANDS.items()]
        names = ",".join(COMMANDS)
        print(f"usage: ablab {{{names}}} [options] [hydra overrides]", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except ConfigError as err:
        print(f"ablab: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
