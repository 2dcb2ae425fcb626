"""``siddm-import``: another code base's trained weights as a siddm_lab checkpoint.

    siddm-import ddgan SRC DST [KEY=VALUE ...] [--recipe cifar10|celeba_256|lsun] [--weights ema|raw]
                 [--generator-only] [--force]

``ddgan``: NVlabs/denoising-diffusion-gan's ``netG_<epoch>.pth`` (the generator; the EMA weights where the run
used --use_ema) or ``content.pth`` (the generator's EMA, or its raw weights with ``--weights raw``, and the
discriminator). SRC is read with ``torch.load(weights_only=True)``; DST is written as the DDGAN model that
``siddm-train model=ddgan_image schedule=ddgan_vp`` builds with the recipe's overrides (DDGAN's README commands:
``cifar10`` T=4, ``celeba_256`` T=2, ``lsun`` T=4) and the given ones (Hydra overrides of the train config, e.g.
``dataset=cifar10 paths.data_dir=/data``). Sample it with ``siddm-sample ckpt=DST sampler=generator``; fine-tune
it with ``siddm-train init.ckpt=DST ...``. An existing DST is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from siddm_lab.errors import SiddmError

SOURCES = ("ddgan",)


def main(argv=None) -> int:
    from siddm_lab.models.ddgan_import import RECIPES, WEIGHTS

    ap = argparse.ArgumentParser(prog="siddm-import", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", choices=SOURCES, help="the code base that wrote SRC")
    ap.add_argument("src", help="netG_<epoch>.pth or content.pth")
    ap.add_argument("dst", help="the siddm_lab checkpoint to write (.ckpt)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="train-config overrides after the recipe's (dataset=..., net.*=..., diffusion.steps=...)")
    ap.add_argument("--recipe", choices=sorted(RECIPES),
                    help="DDGAN's recipe the weights were trained with (default: from dataset=, else cifar10)")
    ap.add_argument("--weights", choices=WEIGHTS, default="ema",
                    help="content.pth: the generator's EMA (default) or raw weights; netG_*.pth holds one set")
    ap.add_argument("--generator-only", action="store_true",
                    help="leave content.pth's discriminator out (a netG_*.pth has none)")
    ap.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from siddm_lab.models.ddgan_import import import_ddgan

        summary = import_ddgan(args.src, args.dst, args.overrides, recipe=args.recipe, weights=args.weights,
                               force=args.force, with_discriminator=not args.generator_only)
    except SiddmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2), flush=True)
    print(f"sample it: siddm-sample ckpt={args.dst} sampler=generator", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
