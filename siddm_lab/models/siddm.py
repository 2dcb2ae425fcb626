"""Diffusion GANs (SIDDM, Xu et al. 2023; DDGAN, Xiao et al. 2022) as one LightningModule.

The module holds a generator G(x_t, t, z) -> x0', a discriminator and an objective
(``siddm_lab.diffusion.losses``: ``DDGANLoss``, ``SIDDMLoss``, ``SIDDMReleasedLoss``) and only steps
the optimisers: every training batch is one ITERATION = one discriminator step on the objective's
``d_terms`` then one generator step on its ``g_terms``. ``global_step`` counts iterations (the D
step is not counted), so ``trainer.max_steps``, checkpoint and EMA periods and logging are all in
iterations.

The process (``model.diffusion``) is discrete (``GaussianDiffusion``, e.g. DDGAN's VP schedule) or
continuous in time (``CosineContinuousTime``, the released SIDDM toy code); sampling runs the
generator chain (``sample_generator_chain``) with T steps, or any K steps in continuous time.

Ensembles: ``SIDDM.stack(models, seeds)`` trains E models that differ only in their seed as one
module (``siddm_lab.nets.ensemble``): batches are [E, B, ...], each member draws its noise from its
own generator seeded like the single run, and member k reproduces that run.
"""

from __future__ import annotations

import torch
from torch import nn

from siddm_lab.diffusion import Denoiser, GANObjective, GeneratorChain, RandomSource
from siddm_lab.diffusion.losses import DDGANLoss
from siddm_lab.errors import ConfigError
from siddm_lab.models.base import DiffusionModule
from siddm_lab.nets.ensemble import ensemble_size, member_state_dict, stack_members

Z_DISTS = ("normal", "uniform")


class SIDDM(DiffusionModule):
    """Args:
        generator: ``f(x_t, t, cond=z) -> x0'`` with ``cond_dim == nz``.
        discriminator: a module, or a factory ``(joint, cond_head, aux_head) -> module`` (a Hydra
            ``_partial_``, ``conf/discriminator``) called with ``objective.discriminator_heads()``, so
            the discriminator has exactly the inputs and heads its objective uses.
        diffusion: ``GaussianDiffusion`` or ``CosineContinuousTime`` (``conf/schedule``).
        objective: a GAN objective of ``siddm_lab.diffusion.losses`` (``model.objective``).
        optimizer_g / optimizer_d: ``params -> Optimizer`` partials.
        lr_scheduler_g / lr_scheduler_d: ``optimizer -> LRScheduler`` partials or None (stepped per iteration).
        nz: latent size.  z_dist: ``normal`` (N(0, I)) or ``uniform`` (U[0, 1), the released toy code).
        grad_clip_g / grad_clip_d: max gradient norm per net (None = off; per member in an ensemble).
    """

    def __init__(self, generator: nn.Module, discriminator, diffusion, objective: GANObjective | None = None,
                 optimizer_g=None, optimizer_d=None, lr_scheduler_g=None, lr_scheduler_d=None, nz: int = 2,
                 z_dist: str = "normal", grad_clip_g: float | None = None, grad_clip_d: float | None = None,
                 log_every_n_steps: int = 50, data_shape=None):
        if objective is None:
            raise ConfigError("model.objective is missing: choose a GAN model (model=siddm | ddgan | siddm_released "
                              "| siddm_image | ddgan_image), which sets its objective (conf/objective)")
        if optimizer_g is None or optimizer_d is None:
            raise ConfigError("model.optimizer_g and model.optimizer_d are required")
        if not isinstance(objective, GANObjective):
            raise ConfigError(f"model.objective must be a GAN objective of siddm_lab.diffusion.losses, got "
                              f"{type(objective).__name__}")
        if discriminator is None:
            raise ConfigError("a diffusion GAN needs a discriminator (conf/discriminator)")
        if getattr(diffusion, "noise", "gaussian") != "gaussian":
            raise ConfigError(f"noise={diffusion.noise}: the diffusion GANs' objectives (pairs and posterior sampling "
                              f"of the Gaussian process) need noise=gaussian; Gamma noise is a DDPM option")
        if z_dist not in Z_DISTS:
            raise ConfigError(f"model.z_dist={z_dist!r} is unknown; allowed: {', '.join(Z_DISTS)}")
        if isinstance(nz, bool) or not isinstance(nz, int) or nz < 1:
            raise ConfigError(f"model.nz={nz!r} is invalid: expected a positive integer (the latent size)")
        if getattr(generator, "cond_dim", nz) != nz:
            raise ConfigError(f"the generator net takes a latent of size {generator.cond_dim} but model.nz={nz}; "
                              f"set net.cond_dim=${{model.nz}}")
        super().__init__(generator, diffusion, objective, discriminator, optimizer_g, optimizer_d, lr_scheduler_g,
                         lr_scheduler_d, grad_clip_g, grad_clip_d, log_every_n_steps, data_shape)
        self.nz, self.z_dist = nz, z_dist

    # ------------------------------------------------------------------ ensembles
    @classmethod
    def stack(cls, models: list[SIDDM], seeds: list[int]) -> SIDDM:
        """E models built alike (one per seed) as one ensemble module (the first model, with its nets
        replaced by the stacked nets of all)."""
        if len(models) != len(seeds) or not models:
            raise ValueError("stack needs one model per seed")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds={list(seeds)} repeats a seed; ensemble members need distinct seeds")
        first = models[0]
        first.generator = stack_members([m.generator for m in models])
        first.discriminator = stack_members([m.discriminator for m in models])
        first.member_seeds = [int(s) for s in seeds]
        first.rng = RandomSource([torch.Generator().manual_seed(int(s)) for s in seeds])
        return first

    @property
    def members(self) -> int | None:
        """E for an ensemble, None for a single model."""
        return ensemble_size(self.generator)

    def on_fit_start(self) -> None:
        if self.rng.stacked and self.rng.generators[0].device != self.device:
            # per-member generators live on the training device (no host round trip per draw)
            self.rng = RandomSource([torch.Generator(self.device).manual_seed(int(s)) for s in self.member_seeds])

    # ------------------------------------------------------------------ pieces
    @property
    def mode(self) -> str:
        """``ddgan`` for a joint discriminator without AFD, else ``siddm`` (for labels)."""
        return "ddgan" if isinstance(self.objective, DDGANLoss) or self.objective.joint else "siddm"

    def sample_z(self, x: torch.Tensor, rng: RandomSource | None = None) -> torch.Tensor:
        """One latent per sample of x ([B, nz] or [E, B, nz])."""
        rng = rng or self.rng
        shape = (*rng.batch_shape(x), self.nz)
        if self.z_dist == "uniform":
            return rng.rand(shape, device=x.device, dtype=x.dtype)
        return rng.randn(shape, device=x.device, dtype=x.dtype)

    def predict_x0_eps(self, x_t, t):
        """(x0', ε') of the generator (latent drawn inside), for the step samplers of a discrete process."""
        x0 = self.generator(x_t, t, self.sample_z(x_t))
        return x0, self.diffusion.predict_eps_from_x0(x_t, t, x0)

    @property
    def label(self) -> str:
        """The method's name for titles and tables: DDGAN or SIDDM (one class trains both)."""
        return self.mode.upper()

    @property
    def continuous(self) -> bool:
        return bool(getattr(self.diffusion, "continuous", False))

    def default_sampler(self):
        return GeneratorChain(self.diffusion)

    def denoiser(self, rng: RandomSource | None = None) -> Denoiser:
        """The generator chain's x0'(x_t, t) (a latent from ``rng`` at every call); a discrete-time single model
        also offers (x0', ε') to the step samplers (e.g. DDIM on the generator's x0'), not deterministic."""
        rng = rng or RandomSource()

        def x0(x, t):
            return self.generator(x, t, self.sample_z(x, rng))

        def x0_eps(x, t):
            x0_ = x0(x, t)
            return x0_, self.diffusion.predict_eps_from_x0(x, t, x0_)

        kind = "continuous-time diffusion GAN" if self.continuous else "diffusion GAN"
        what = f"ensemble of {self.members} {kind}s" if self.members is not None else kind
        step_samplers = not self.continuous and self.members is None
        return Denoiser(self.diffusion, x0_eps=x0_eps if step_samplers else None, x0=x0, deterministic=False,
                        description=f"this {what} ({self.mode.upper()}: it samples with its generator chain)")

    def sampling_rng(self, seed: int | None) -> RandomSource:
        """One generator per member of an ensemble, all seeded with ``seed`` (paired samples: what the single
        run with that generator would draw)."""
        if self.members is None:
            return super().sampling_rng(seed)
        seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,)))
        return RandomSource([torch.Generator(self.device).manual_seed(seed) for _ in range(self.members)])

    def draw(self, sampler, x_T: torch.Tensor, seed: int | None, progress: bool = False) -> torch.Tensor:
        """One batch from x_T. Every member of an ensemble starts from the same x_T and draws the same latents
        and noise (``sampling_rng``)."""
        if self.members is not None:
            x_T = x_T.expand(self.members, *x_T.shape).contiguous()
        return super().draw(sampler, x_T, seed, progress)

    def validation_step(self, batch, batch_idx):
        """The generator's x0 reconstruction error from x_t ~ q(x_t | x0) (a health signal), with t, the
        noise and z fixed per batch so that it is comparable across evaluations."""
        g = torch.Generator().manual_seed(10_000 + batch_idx)
        if self.members is not None:
            batch = batch.expand(self.members, *batch.shape)
        lead = batch.shape[:-len(self.data_shape)] if self.data_shape else batch.shape[:1]
        if self.continuous:
            t = torch.rand(lead, generator=g).clamp(self.diffusion.t_min, 1.0).to(self.device)
        else:
            t = torch.randint(0, self.diffusion.num_timesteps, lead, generator=g).to(self.device)
        noise = torch.randn(batch.shape, generator=g).to(self.device, batch.dtype)
        x_t = self.diffusion.q_sample(batch, t, noise)
        rng = RandomSource([torch.Generator().manual_seed(batch_idx) for _ in range(self.members)]) if self.members \
            else RandomSource.single(torch.Generator().manual_seed(batch_idx))
        z = self.sample_z(x_t, rng).to(self.device)
        loss = (self.generator(x_t, t, z) - batch).pow(2).mean()
        self.log("val/x0_mse", loss, prog_bar=True, sync_dist=True)
        return loss

    @staticmethod
    def member_state_dict(state: dict, k: int) -> dict:
        """Member k's weights in a checkpoint ``state_dict`` of an ensemble (loads into a single model)."""
        return member_state_dict(state, ("generator.", "discriminator."), k)
