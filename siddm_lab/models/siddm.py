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

from siddm_lab.diffusion import GANObjective, GANParts, RandomSource, sample_generator_chain
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

    # Under DDP (which wraps the whole module) the D step leaves G's parameters out and the G step
    # D's: the trainer is built with find_unused_parameters=True for this model.
    ddp_find_unused_parameters = True

    def __init__(self, generator: nn.Module, discriminator, diffusion, objective: GANObjective | None = None,
                 optimizer_g=None, optimizer_d=None, lr_scheduler_g=None, lr_scheduler_d=None, nz: int = 2,
                 z_dist: str = "normal",
                 grad_clip_g: float | None = None, grad_clip_d: float | None = None, sampling: dict | None = None,
                 eval_num_samples: int = 1000, log_every_n_steps: int = 50):
        super().__init__(diffusion, optimizer_g, lr_scheduler_g, sampling, eval_num_samples, log_every_n_steps)
        if objective is None:
            raise ConfigError("model.objective is missing: choose a GAN model (model=siddm | ddgan | siddm_released "
                              "| siddm_image | ddgan_image), which sets its objective (conf/objective)")
        if optimizer_g is None or optimizer_d is None:
            raise ConfigError("model.optimizer_g and model.optimizer_d are required")
        if not isinstance(objective, GANObjective):
            raise ConfigError(f"model.objective must be a GAN objective of siddm_lab.diffusion.losses, got "
                              f"{type(objective).__name__}")
        if z_dist not in Z_DISTS:
            raise ConfigError(f"model.z_dist={z_dist!r} is unknown; allowed: {', '.join(Z_DISTS)}")
        if getattr(generator, "cond_dim", nz) != nz:
            raise ConfigError(f"the generator net takes a latent of size {generator.cond_dim} but model.nz={nz}; "
                              f"set net.cond_dim=${{model.nz}}")
        if not isinstance(discriminator, nn.Module):
            discriminator = discriminator(**objective.discriminator_heads())
        if getattr(discriminator, "joint", objective.joint) != objective.joint:
            need = "a joint" if objective.joint else "a marginal"
            raise ConfigError(f"{type(objective).__name__} needs {need} discriminator (discriminator.joint="
                              f"{str(objective.joint).lower()})")
        self.automatic_optimization = False
        self.generator, self.discriminator, self.objective = generator, discriminator, objective
        self.optimizer_d_factory = optimizer_d
        self.lr_scheduler_d_factory = lr_scheduler_d
        self.nz, self.z_dist = nz, z_dist
        self.grad_clip_g, self.grad_clip_d = grad_clip_g, grad_clip_d
        self.rng = RandomSource()  # the global RNG (StepSeed reseeds it every step)
        self._sample_rng: RandomSource | None = None
        self.member_seeds: list[int] | None = None

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
        rng = rng or self._sample_rng or self.rng
        shape = (*rng.batch_shape(x), self.nz)
        if self.z_dist == "uniform":
            return rng.rand(shape, device=x.device, dtype=x.dtype)
        return rng.randn(shape, device=x.device, dtype=x.dtype)

    def parts(self, rng: RandomSource | None = None) -> GANParts:
        rng = rng or self.rng
        return GANParts(self.generator, self.discriminator, self.diffusion, lambda x: self.sample_z(x, rng), rng)

    def predict_x0_eps(self, x_t, t):
        """(x0', ε') of the generator (latent drawn inside), for the step samplers of a discrete process."""
        x0 = self.generator(x_t, t, self.sample_z(x_t))
        return x0, self.diffusion.predict_eps_from_x0(x_t, t, x0)

    @property
    def continuous(self) -> bool:
        return bool(getattr(self.diffusion, "continuous", False))

    def default_sampler_and_timesteps(self):
        return None, None

    @torch.no_grad()
    def sample(self, n, generator=None, sampler=None, timesteps=None, batch_size=None, progress=False,
               steps: int | None = None) -> torch.Tensor:
        """n samples: [n, *data_shape], or [E, n, *data_shape] for an ensemble.

        By default the generator chain (T steps; ``steps`` = K in continuous time). A discrete-time
        single model also takes a step ``sampler`` over ``timesteps`` (e.g. DDIM on the generator's x0').
        Every member of an ensemble starts from the same x_T and draws the same latents and noise
        (what the single run with that generator would draw): samples are paired across members.
        """
        if self.data_shape is None:
            raise RuntimeError("data_shape is unknown: attach a datamodule or set model.data_shape")
        if sampler is not None:
            if self.continuous or self.members is not None:
                raise ConfigError("a step sampler (sampler=ddim|ddpm) needs a discrete-time single model; this "
                                  "one samples with its generator chain (sampler.steps = K generator steps)")
            seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
            self._sample_rng = (RandomSource.single(torch.Generator(self.device).manual_seed(seed))
                                if seed is not None else None)
            try:
                return super().sample(n, generator, sampler, timesteps, batch_size, progress)
            finally:
                self._sample_rng = None
        bs = batch_size or self.sampling["batch_size"]
        E = self.members
        was_training = self.training
        self.eval()
        out = []
        try:
            for i in range(0, n, bs):
                m = min(bs, n - i)
                x_T = torch.randn((m, *self.data_shape), generator=generator).to(self.device)
                seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
                if E is None:
                    rng = (RandomSource.single(torch.Generator(self.device).manual_seed(seed)) if seed is not None
                           else RandomSource())
                else:
                    x_T = x_T.expand(E, *x_T.shape).contiguous()
                    seeds = [seed if seed is not None else int(torch.randint(0, 2**62, (1,)))] * E
                    rng = RandomSource([torch.Generator(self.device).manual_seed(s) for s in seeds])
                x = sample_generator_chain(lambda x, t, rng=rng: self.generator(x, t, self.sample_z(x, rng)),
                                           self.diffusion, x_T, rng, steps)
                out.append(x.cpu())
        finally:
            self.train(was_training)
        return torch.cat(out, dim=0 if E is None else 1)

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        opt_g = self.optimizer_factory(params=self.generator.parameters())
        opt_d = self.optimizer_d_factory(params=self.discriminator.parameters())
        scheds = []
        for factory, opt in ((self.lr_scheduler_factory, opt_g), (self.lr_scheduler_d_factory, opt_d)):
            if factory is not None:
                scheds.append({"scheduler": factory(optimizer=opt), "interval": "step"})
        return [opt_g, opt_d], scheds

    def _clip(self, opt, net: nn.Module, max_norm: float | None) -> None:
        if max_norm is None:
            return
        if self.members is None:
            self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
            return
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)  # per member
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.reshape(-1, *((1,) * (g.dim() - 1))))

    def _update(self, opt, terms: dict, net: nn.Module, max_norm, name: str, counted: bool) -> torch.Tensor:
        loss = sum(terms.values())
        self.check_finite(name, loss.detach())
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss.sum() if loss.dim() else loss)
        self._clip(opt, net, max_norm)
        if counted:
            opt.step()
        else:
            self.step_uncounted(opt)
        return loss

    def check_finite(self, name: str, value: torch.Tensor) -> None:
        if self.members is None or torch.isfinite(value).all():
            return super().check_finite(name, value)
        bad = [s for s, v in zip(self.member_seeds, value.tolist()) if not torch.isfinite(torch.tensor(v))]
        super().check_finite(f"{name} of the ensemble members with seeds {bad}", value)

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        parts = self.parts()
        iteration = self.global_step
        with self.toggled_optimizer(opt_d):
            d = self.objective.d_terms(parts, batch, iteration)
            loss_d = self._update(opt_d, d, self.discriminator, self.grad_clip_d, "train/loss_d", counted=False)
        with self.toggled_optimizer(opt_g):
            g = self.objective.g_terms(parts, batch, iteration)
            loss_g = self._update(opt_g, g, self.generator, self.grad_clip_g, "train/loss_g", counted=True)
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds]:
            if sched is not None:
                sched.step()
        if batch_idx % self.log_every_n_steps == 0:  # means over the members of an ensemble
            logged = {"train/loss_d": loss_d, "train/loss_g": loss_g,
                      **{f"train/{k}": v for k, v in {**d, **g}.items()}}
            self.log_dict({k: v.detach().mean() for k, v in logged.items()}, prog_bar=False)

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
