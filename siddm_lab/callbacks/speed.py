"""Speed options of the nets that do not change what is computed: ``channels_last`` memory format of
the conv weights and ``torch.compile`` of the generator and discriminator (``callbacks.speed``).

Both are off by default. On the MNIST recipe on one CPU core (``bench/results/train_siddm_options.md``)
channels_last changes nothing and compile saves 16 % once compiled, the compilation not counted; on GPUs
bf16 (``trainer.precision=bf16-mixed``), channels_last and compile are the usual wins.
The nets are changed in place in ``setup``, before the
optimisers are built and a checkpoint is loaded, so parameter names and checkpoints stay the same
(``nn.Module.compile`` compiles the forward of the module itself; ``torch.compile(net)`` would wrap it and
rename every parameter ``_orig_mod.*``).

R1 differentiates the discriminator twice (its gradient penalty is itself differentiated), which
compiled modules do not support (AOTAutograd has no double backward): with ``objective.r1_gamma > 0``
the discriminator stays eager and only the generator is compiled.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from siddm_lab.errors import ConfigError

log = logging.getLogger(__name__)

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def nets_of(pl_module) -> dict[str, torch.nn.Module]:
    """The trained nets of a diffusion module: its generator (the denoiser of a DDPM) and discriminator."""
    nets = {k: getattr(pl_module, k, None) for k in ("generator", "discriminator")}
    return {k: v for k, v in nets.items() if isinstance(v, torch.nn.Module)}


def to_channels_last(net: torch.nn.Module) -> torch.nn.Module:
    """The net with its 4-D weights in channels_last (NHWC) order; conv outputs follow them."""
    return net.to(memory_format=torch.channels_last)


class NetSpeedups(L.Callback):
    """Args: ``channels_last`` (conv weights in NHWC order); ``compile`` (``nn.Module.compile`` of each
    net: the first iterations pay the compilation, minutes on a CPU); ``compile_mode`` (torch.compile's
    ``mode``, null = its default)."""

    def __init__(self, channels_last: bool = False, compile: bool = False, compile_mode: str | None = None):
        for key, v in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(v, bool):
                raise ConfigError(f"callbacks.speed.{key}={v!r} is invalid: expected true or false")
        if compile_mode not in COMPILE_MODES:
            raise ConfigError(f"callbacks.speed.compile_mode={compile_mode!r} is unknown; allowed: "
                              f"{', '.join(str(m).lower() if m is None else m for m in COMPILE_MODES)}")
        self.channels_last, self.compile, self.compile_mode = channels_last, compile, compile_mode

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        r1 = getattr(getattr(pl_module, "objective", None), "r1_gamma", 0.0) > 0
        for name, net in nets_of(pl_module).items():
            if self.channels_last:
                to_channels_last(net)
            compiled = self.compile and not (name == "discriminator" and r1)
            if compiled:
                net.compile(**({"mode": self.compile_mode} if self.compile_mode else {}))
            elif self.compile:
                log.warning("discriminator left eager: R1 (objective.r1_gamma > 0) needs its double backward, "
                            "which torch.compile does not support; the generator is compiled")
            if self.channels_last or compiled:
                log.info("%s: channels_last=%s, compile=%s", name, self.channels_last, compiled)
