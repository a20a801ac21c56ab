"""``python -m torchcb.export CHECKPOINT_DIR OUT.pt``: a sharded checkpoint as one plain state_dict.

The directory ``model.save``, ``ModelCheckpoint`` or ``BackupAndRestore`` writes under
``strategy="fsdp"`` becomes one ``torch.save`` file of the module's full ``state_dict``, which
``module.load_state_dict(torch.load(OUT.pt, weights_only=True))`` loads without torchcb. It
runs in one process. ``--optimizer`` keeps the optimizer state too (``{"model", "optimizer"}``).

Example:
    >>> from torchcb.export import parser
    >>> parser().parse_args(["ckpt", "full.pt"]).optimizer
    False
"""

from __future__ import annotations

import argparse
import sys

from torchcb.sharded import export_full

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    result = argparse.ArgumentParser(
        prog="python -m torchcb.export", description="Turn a sharded torchcb checkpoint into one torch.save file."
    )
    result.add_argument("checkpoint", help="the checkpoint directory (written under strategy='fsdp')")
    result.add_argument("output", help="the .pt file to write (atomically)")
    result.add_argument("--optimizer", action="store_true", help="keep the optimizer state too")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns its exit status."""
    args = parser().parse_args(argv)
    export_full(args.checkpoint, args.output, optimizer=args.optimizer)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
