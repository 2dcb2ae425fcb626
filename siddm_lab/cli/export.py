"""Small, shareable checkpoints: the (EMA) weights and the run's config of a siddm-train checkpoint,
without optimizer or callback states, and a manifest that records how each was made.

    python -m siddm_lab.cli.export SRC.ckpt DST.ckpt [--member SEED] [--manifest M.json --command "..."]
    python -m siddm_lab.cli.export --verify M.json

An exported file loads like any checkpoint (``siddm-sample ckpt=DST.ckpt``, ``load_model``). From an
ensemble (``seeds=[...]``) ``--member`` exports one member as a single model (its config records
``seed`` = the member and no ``seeds``). The manifest maps each file name to its sha256, the command
that trained it, its iterations and training seconds; ``--verify`` checks every file against it.
The work is done by ``siddm_lab.models.export``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siddm_lab.errors import CheckpointError
from siddm_lab.models.export import add_to_manifest, export, verify


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", nargs="?")
    ap.add_argument("dst", nargs="?")
    ap.add_argument("--member", type=int, help="the training seed of an ensemble member to export")
    ap.add_argument("--manifest", help="JSON manifest to add the file to (sha256, command, iterations)")
    ap.add_argument("--command", default="", help="the command that trained the source checkpoint")
    ap.add_argument("--verify", metavar="MANIFEST", help="check the files of a manifest and exit")
    args = ap.parse_args(argv)
    try:
        if args.verify:
            problems = verify(args.verify)
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            if not problems:
                print(f"{args.verify}: every file matches its sha256")
            return 1 if problems else 0
        if not args.src or not args.dst:
            ap.error("give SRC and DST (or --verify MANIFEST)")
        entry = export(args.src, args.dst, args.member)
        entry["command"] = args.command
        if args.manifest:
            add_to_manifest(args.manifest, args.dst, entry)
        print(json.dumps({Path(args.dst).name: entry}, indent=2))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
