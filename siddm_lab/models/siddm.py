"""SIDDM (Xu et al. 2023) and DDGAN (Xiao et al. 2022) as one LightningModule (manual optimisation).

Both train a generator G(x_t, z, t) -> x0' with x'_{t-1} ~ q(x_{t-1} | x_t, x0') and sample with T
generator steps (x_T ~ N(0, I); predict x0', take a posterior sample; the last step returns x0').

Objective implemented (REFERENCES §4-5), with (x_{t-1}, x_t) = q_sample_pairs(x0, t), t ~ U{0..T-1}:

  DDGAN (``mode=ddgan``), joint discriminator D(x_{t-1}, x_t, t):
    L_D = softplus(-D(x_{t-1}, x_t)) + softplus(D(x'_{t-1}, x_t)) [+ R1 every lazy_reg steps]
    L_G = softplus(-D(x'_{t-1}, x_t))

  SIDDM (``mode=siddm``), marginal discriminator D(x_{t-1}, t) (it never sees x_t):
    L_D = softplus(-D(x_{t-1})) + softplus(D(x'_{t-1})) [+ R1]
          + λ_reg · ||D_aux(x_{t-1}, t) - x0||²                    (discriminator regulariser, real pairs)
          + λ_AFD · ||x_t - C_ψ(sg[x'_{t-1}], t)||²                 (entropy estimator, if ablation.entropy)
    L_G = w_adv · softplus(-D(x'_{t-1}))
          + λ_AFD · AFD_CE(x'_{t-1}, x_t)                           (cross-entropy of q(x_t | x'_{t-1}))
          - λ_AFD · ||x_t - C_ψ(x'_{t-1}, t)||²                    (entropy, if ablation.entropy)
    AFD_CE = mean (sqrt(1-β_t) x'_{t-1} [+ sqrt(β_t) ε] - x_t)²  (``afd_form``: released | paper).

The entropy min-max is a reconstruction of the paper's C_ψ game (not verified against its text);
``ablation.entropy=false`` is the released code's form. Ablations (``conf/ablation``) switch the
terms: full, no_afd (λ_AFD = 0), no_disc_reg, no_afd_no_reg, afd_only (w_adv = 0), no_entropy.

Steps: every training batch is one iteration = one D step then one G step; Lightning's
``global_step`` counts optimizer steps, so it advances by 2 per iteration and ``trainer.max_steps``
is twice the number of iterations (the experiment configs set it so).
"""

from __future__ import annotations

import torch
from torch import nn

from siddm_lab.diffusion import gan_losses as GL
from siddm_lab.errors import ConfigError
from siddm_lab.models.base import DiffusionModule

MODES = ("siddm", "ddgan")
DEFAULT_ABLATION = {"lambda_afd": 1.0, "afd_form": "released", "entropy": True, "disc_reg": True,
                    "lambda_disc_reg": 1.0, "adversarial": True}


class SIDDM(DiffusionModule):
    """Args:
        generator: ``f(x_t, t, cond=z) -> x0'`` with ``cond_dim == nz``.
        discriminator: a discriminator module, or a factory ``(joint, cond_head, aux_head) -> module``
            (a Hydra ``_partial_``, ``conf/discriminator``) that the model calls with what its mode and
            ablation need: joint for ddgan, the C_ψ head if the entropy term is on, the D_aux head if
            the regulariser is on (so every parameter takes part in a loss).
        optimizer_g / optimizer_d: ``params -> Optimizer`` partials (Adam betas (0.5, 0.9) in DDGAN).
        lr_scheduler_g / lr_scheduler_d: ``optimizer -> LRScheduler`` partials or None (stepped per iteration).
        mode: siddm | ddgan.  nz: latent size.  z_dist: normal | uniform (the authors' toy code: uniform).
        ablation: see DEFAULT_ABLATION.  r1_gamma / lazy_reg: R1 weight and period (0 = off).
        grad_clip_g / grad_clip_d: max gradient norm (None = off), applied with ``clip_gradients``.
    """

    # Under DDP (which wraps the whole module) the D step leaves G's parameters out and the G step
    # D's (toggled off): the trainer is built with find_unused_parameters=True for this model.
    ddp_find_unused_parameters = True

    def __init__(self, generator: nn.Module, discriminator: nn.Module, diffusion, optimizer_g, optimizer_d,
                 lr_scheduler_g=None, lr_scheduler_d=None, mode: str = "siddm", nz: int = 2, z_dist: str = "normal",
                 ablation: dict | None = None, r1_gamma: float = 0.0, lazy_reg: int = 1,
                 grad_clip_g: float | None = None, grad_clip_d: float | None = None, sampling: dict | None = None,
                 eval_num_samples: int = 1000, log_every_n_steps: int = 50):
        super().__init__(diffusion, optimizer_g, lr_scheduler_g, sampling, eval_num_samples, log_every_n_steps)
        if mode not in MODES:
            raise ConfigError(f"model.mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
        if z_dist not in ("normal", "uniform"):
            raise ConfigError(f"model.z_dist={z_dist!r} is unknown; allowed: normal, uniform")
        if getattr(generator, "cond_dim", nz) != nz:
            raise ConfigError(f"the generator net takes a latent of size {generator.cond_dim} but model.nz={nz}; "
                              f"set net.cond_dim=${{model.nz}}")
        abl = {**DEFAULT_ABLATION, **(dict(ablation) if ablation else {})}
        unknown = set(abl) - set(DEFAULT_ABLATION) - {"name"}
        if unknown:
            raise ConfigError(f"ablation keys {sorted(unknown)} are unknown; allowed: {', '.join(DEFAULT_ABLATION)}")
        if abl["lambda_afd"] < 0 or abl["lambda_disc_reg"] < 0:
            raise ConfigError("ablation.lambda_afd and ablation.lambda_disc_reg must be >= 0")
        self.mode, self.ablation = mode, abl
        if not isinstance(discriminator, nn.Module):
            discriminator = discriminator(joint=mode == "ddgan", cond_head=self.uses_entropy,
                                          aux_head=self.uses_disc_reg)
        if mode == "ddgan" and not getattr(discriminator, "joint", True):
            raise ConfigError("model.mode=ddgan needs a joint discriminator (discriminator.joint=true)")
        if mode == "siddm" and getattr(discriminator, "joint", False):
            raise ConfigError("model.mode=siddm needs a marginal discriminator (discriminator.joint=false)")
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.optimizer_d_factory = optimizer_d
        self.lr_scheduler_d_factory = lr_scheduler_d
        self.nz, self.z_dist = nz, z_dist
        self.r1_gamma, self.lazy_reg = float(r1_gamma), max(1, int(lazy_reg))
        self.grad_clip_g, self.grad_clip_d = grad_clip_g, grad_clip_d
        self._z_generator: torch.Generator | None = None
        self.sampling["name"] = "ddpm"  # generator sampling = posterior sampling (fixed_small)
        self.sampling["variance_type"] = "fixed_small"

    # ------------------------------------------------------------------ terms in use
    @property
    def uses_afd(self) -> bool:
        return self.mode == "siddm" and self.ablation["lambda_afd"] > 0

    @property
    def uses_entropy(self) -> bool:
        return self.uses_afd and bool(self.ablation["entropy"])

    @property
    def uses_disc_reg(self) -> bool:
        return self.mode == "siddm" and bool(self.ablation["disc_reg"]) and self.ablation["lambda_disc_reg"] > 0

    # ------------------------------------------------------------------ pieces
    def sample_z(self, n: int, like: torch.Tensor) -> torch.Tensor:
        shape = (n, self.nz)
        g = self._z_generator
        if self.z_dist == "uniform":
            z = torch.rand(shape, generator=g, device=g.device if g else like.device) * 2 - 1
        else:
            z = torch.randn(shape, generator=g, device=g.device if g else like.device)
        return z.to(like.device, like.dtype)

    def generate_prev(self, x_t: torch.Tensor, t: torch.Tensor):
        """(x0', x'_{t-1}) from the generator and the posterior q(x_{t-1} | x_t, x0')."""
        x0_pred = self.generator(x_t, t, self.sample_z(x_t.shape[0], x_t))
        return x0_pred, self.diffusion.q_posterior_sample(x0_pred, x_t, t)

    def discriminate(self, x_prev, t, x_t, heads=("logit",)):
        return self.discriminator(x_prev, t, x_t if self.mode == "ddgan" else None, heads=heads)

    def predict_x0_eps(self, x_t, t):
        x0 = self.generator(x_t, t, self.sample_z(x_t.shape[0], x_t))
        return x0, self.diffusion.predict_eps_from_x0(x_t, t, x0)

    @torch.no_grad()
    def sample(self, n, generator=None, sampler=None, timesteps=None, batch_size=None, progress=False):
        # z comes from its own generator, seeded from ``generator``: samples are reproducible.
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            self._z_generator = torch.Generator(self.device).manual_seed(seed)
        try:
            return super().sample(n, generator, sampler, timesteps, batch_size, progress)
        finally:
            self._z_generator = None

    # ------------------------------------------------------------------ losses
    def d_losses(self, x0, x_prev, x_t, t, step: int) -> dict[str, torch.Tensor]:
        heads = ("logit", "aux") if self.uses_disc_reg else ("logit",)
        r1 = self.r1_gamma > 0 and step % self.lazy_reg == 0
        x_real = x_prev.detach().requires_grad_(r1)
        out_real = self.discriminate(x_real, t, x_t, heads)
        losses = {"d_real": GL.d_loss_real(out_real.logit)}
        if r1:
            losses["r1"] = GL.r1_penalty(out_real.logit, x_real, self.r1_gamma)
        with torch.no_grad():
            _, x_prev_fake = self.generate_prev(x_t, t)
        out_fake = self.discriminate(x_prev_fake, t, x_t, ("logit", "cond") if self.uses_entropy else ("logit",))
        losses["d_fake"] = GL.d_loss_fake(out_fake.logit)
        if self.uses_disc_reg:
            losses["disc_reg"] = self.ablation["lambda_disc_reg"] * GL.disc_reconstruction(out_real.aux, x0)
        if self.uses_entropy:
            losses["entropy_c"] = self.ablation["lambda_afd"] * GL.afd_entropy_c(x_t, out_fake.cond)
        return losses

    def g_losses(self, x_t, t) -> dict[str, torch.Tensor]:
        _, x_prev_fake = self.generate_prev(x_t, t)
        heads = ("logit", "cond") if self.uses_entropy else ("logit",)
        out = self.discriminate(x_prev_fake, t, x_t, heads)
        losses = {}
        if self.ablation["adversarial"]:
            losses["g_adv"] = GL.g_loss_adv(out.logit)
        if self.uses_afd:
            lam = self.ablation["lambda_afd"]
            losses["afd_ce"] = lam * GL.afd_cross_entropy(self.diffusion, x_prev_fake, x_t, t,
                                                          self.ablation["afd_form"])
            if self.uses_entropy:
                losses["afd_entropy"] = lam * GL.afd_entropy_g(x_t, out.cond)
        if not losses:
            raise ConfigError("the generator has no loss: enable ablation.adversarial or AFD (mode=siddm, "
                              "ablation.lambda_afd > 0)")
        return losses

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        opt_g = self.optimizer_factory(params=self.generator.parameters())
        opt_d = self.optimizer_d_factory(params=self.discriminator.parameters())
        scheds = []
        for factory, opt in ((self.lr_scheduler_factory, opt_g), (self.lr_scheduler_d_factory, opt_d)):
            if factory is not None:
                scheds.append({"scheduler": factory(optimizer=opt), "interval": "step"})
        return [opt_g, opt_d], scheds

    def _step(self, opt, loss, params_clip, name):
        self.check_finite(name, loss.detach())
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if params_clip is not None:
            self.clip_gradients(opt, gradient_clip_val=params_clip, gradient_clip_algorithm="norm")
        opt.step()

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        x0 = batch
        t = self.diffusion.sample_timesteps(x0.shape[0], device=x0.device)
        x_prev, x_t = self.diffusion.q_sample_pairs(x0, t)
        iteration = self.global_step // 2  # one D step + one G step per iteration

        with self.toggled_optimizer(opt_d):
            d = self.d_losses(x0, x_prev, x_t, t, iteration)
            loss_d = sum(d.values())
            self._step(opt_d, loss_d, self.grad_clip_d, "train/loss_d")
        with self.toggled_optimizer(opt_g):
            g = self.g_losses(x_t, t)
            loss_g = sum(g.values())
            self._step(opt_g, loss_g, self.grad_clip_g, "train/loss_g")
        for sched in self.lr_schedulers() if isinstance(self.lr_schedulers(), list) else [self.lr_schedulers()]:
            if sched is not None:
                sched.step()
        if batch_idx % self.log_every_n_steps == 0:
            self.log_dict({"train/loss_d": loss_d.detach(), "train/loss_g": loss_g.detach(),
                           **{f"train/{k}": v.detach() for k, v in {**d, **g}.items()}}, prog_bar=False)

    def validation_step(self, batch, batch_idx):
        g = torch.Generator().manual_seed(10_000 + batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (batch.shape[0],), generator=g).to(self.device)
        noise = torch.randn(batch.shape, generator=g).to(self.device, batch.dtype)
        _, x_t = self.diffusion.q_sample_pairs(batch, t, noise, noise)
        self._z_generator = torch.Generator(self.device).manual_seed(batch_idx)
        try:
            x0_pred = self.generator(x_t, t, self.sample_z(batch.shape[0], batch))
        finally:
            self._z_generator = None
        loss = (x0_pred - batch).pow(2).mean()  # the generator's x0 reconstruction error (a health signal)
        self.log("val/x0_mse", loss, prog_bar=True, sync_dist=True)
        return loss
