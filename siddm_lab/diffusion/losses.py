"""Training objectives as small loss objects (after NVlabs/edm's ``training/loss.py``).

A GAN objective returns its discriminator terms (``d_terms``) and its generator terms
(``g_terms``) as a dict of scalars (or, for an ensemble, of per-member vectors [E]); the
LightningModule sums each dict and steps the matching optimiser. Nothing here knows Lightning.

Conventions (REFERENCES §4-5). The process (``GaussianDiffusion`` in discrete time,
``CosineContinuousTime`` in continuous time) gives training pairs (x_prev, x_t) one forward step
apart; the generator G(x_t, t, z) predicts x0' and x'_prev ~ q(x_prev | x_t, x0') is its sample of
the earlier state. Discriminator outputs are logits; the adversarial losses are the non-saturating
softplus form, which equals binary cross-entropy on sigmoid(D): BCE(σ(l), 1) = −log σ(l) = softplus(−l)
and BCE(σ(l), 0) = softplus(l) (torch's BCE clips the log at −100, i.e. |l| > 100, where softplus
keeps its exact value and gradient). Every random draw goes through ``parts.rng`` (``RandomSource``)
so that an ensemble member reproduces the single run with its seed.

Objectives:
* ``DDPMLoss``: E ||f(x_t, t) − target||², target ε, x0 or v.
* ``DDGANLoss`` (Xiao et al. 2022): JOINT discriminator D(x_prev, t, x_t).
* ``SIDDMLoss`` (Xu et al. 2023, the paper's description): MARGINAL discriminator D(x_prev, t), the
  auxiliary forward diffusion (AFD) cross-entropy, its entropy min-max with the C_ψ head, and the
  discriminator regulariser D_aux(x_prev, t) ≈ x0.
* ``SIDDMReleasedLoss`` (the authors' released toy code): D scores x0 against the generator's x0',
  conditioned on the pair's EARLIER time (and on x_t only when ``joint``, its DDGAN mode), plus
  ``afd_weight`` · mean((re-diffused x'_prev − x_t)²); no R1, entropy or regulariser.

``disc_input`` (x_prev | x0) chooses what the discriminator scores in every GAN objective: the
paper's x_{t-1} (DDGAN, SIDDM) or the released code's x0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from siddm_lab.diffusion.rng import GLOBAL, RandomSource
from siddm_lab.errors import ConfigError

AFD_FORMS = ("released", "paper")
DISC_INPUTS = ("x_prev", "x0")
DISC_TIMES = ("pair", "prev")
PREDICTION_TYPES = ("eps", "x0", "v")


def _weight(key: str, v) -> float:
    """``v`` as a float if it is a finite number >= 0 (a loss weight), else a ConfigError naming ``key``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
        raise ConfigError(f"{key}={v!r} is invalid: expected a finite number >= 0")
    return float(v)


def _choice(key: str, v, allowed) -> str:
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is invalid: expected one of {', '.join(allowed)}")
    return v


class DDPMLoss:
    """Denoising regression E ||f(x_t, t) − target||² (Ho et al. 2020), t ~ U{0..T−1}.

    With a discriminator (``DDPM(discriminator=...)``) the denoiser's x0' = x0'(f(x_t, t)) is also
    scored against the data x0 at the time t, and the generator adds ``adversarial`` ·
    softplus(−D(x0', t)) to its regression loss (the discriminator: softplus(−D(x0)) + softplus(D(x0'))).
    """

    joint = False

    def __init__(self, prediction_type: str = "eps", adversarial: float = 0.1):
        self.prediction_type = _choice("model.prediction_type", prediction_type, PREDICTION_TYPES)
        self.adversarial = _weight("model.adversarial", adversarial)

    def __call__(self, net, diffusion, x0: torch.Tensor, t: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, rng: RandomSource = GLOBAL) -> torch.Tensor:
        return self._regression(net, diffusion, x0, t, noise, rng)[0]

    def _regression(self, net, diffusion, x0, t=None, noise=None, rng: RandomSource = GLOBAL):
        if t is None:
            t = diffusion.sample_times(rng, x0)
        if noise is None:
            noise = diffusion.noise_like(x0, t, rng)
        x_t = diffusion.q_sample(x0, t, noise)
        out = net(x_t, t)
        target = diffusion.training_target(self.prediction_type, x0, noise, t)
        return rng.member_mean((out - target).pow(2)), x_t, t, out

    def discriminator_heads(self) -> dict:
        return {"joint": False, "cond_head": False, "aux_head": False}

    def _x0(self, parts: GANParts, x_t, t, out):
        return parts.process.to_x0_eps(self.prediction_type, x_t, t, out)[0]

    def d_terms(self, parts: GANParts, x0: torch.Tensor, iteration: int = 0) -> dict[str, torch.Tensor]:
        """Real data against the denoiser's x0' at a random t (only with a discriminator)."""
        rng = parts.rng
        t = parts.process.sample_times(rng, x0)
        with torch.no_grad():
            x_t = parts.process.q_sample(x0, t, parts.process.noise_like(x0, t, rng))
            x0_fake = self._x0(parts, x_t, t, parts.generator(x_t, t, None))
        real = parts.discriminator(x0, t, None, heads=("logit",)).logit
        fake = parts.discriminator(x0_fake, t, None, heads=("logit",)).logit
        return {"d_real": rng.member_mean(F.softplus(-real)), "d_fake": rng.member_mean(F.softplus(fake))}

    def g_terms(self, parts: GANParts, x0: torch.Tensor, iteration: int = 0) -> dict[str, torch.Tensor]:
        loss, x_t, t, out = self._regression(lambda x, s: parts.generator(x, s, None), parts.process, x0,
                                             rng=parts.rng)
        terms = {"loss": loss}
        if parts.discriminator is not None and self.adversarial > 0:
            logit = parts.discriminator(self._x0(parts, x_t, t, out), t, None, heads=("logit",)).logit
            terms["g_adv"] = self.adversarial * parts.rng.member_mean(F.softplus(-logit))
        return terms


@dataclass
class GANParts:
    """What a GAN objective needs from the model: the nets, the process, z and the noise source.

    ``generator(x_t, t, z) -> x0'``; ``discriminator(x, t, x_cond, heads) -> DiscriminatorOutput``;
    ``sample_z(x) -> z`` (one latent per sample of x).
    """

    generator: Callable
    discriminator: Callable
    process: object
    sample_z: Callable[[torch.Tensor], torch.Tensor]
    rng: RandomSource = GLOBAL


def r1_penalty(logits_real: torch.Tensor, x_real: torch.Tensor, gamma: float, rng: RandomSource = GLOBAL):
    """R1 (Mescheder et al. 2018): γ/2 · E ||∇_x D(x)||² on real data (``x_real`` requires grad).
    Lazy regularisation is the caller's business: DDGAN adds it un-scaled every ``lazy_reg`` steps."""
    (grad,) = torch.autograd.grad(logits_real.sum(), x_real, create_graph=True)
    per_sample = grad.pow(2).flatten(rng.batch_ndim()).sum(-1)
    return gamma / 2 * rng.member_mean(per_sample)


class GANObjective:
    """The adversarial game shared by the diffusion GANs.

    Args:
        disc_input: what D scores: ``x_prev`` (the paper's x_{t-1}) or ``x0`` (the released code).
        disc_time: D's time condition: ``pair`` (the pair's index t, as DDGAN) or ``prev`` (the
            pair's earlier time, as the released code).
        r1_gamma / lazy_reg: R1 weight on real inputs and its period in iterations (0 = off).
        adversarial: weight of the generator's adversarial term (0 = AFD only).
    """

    joint = False

    def __init__(self, disc_input: str = "x_prev", disc_time: str = "pair", r1_gamma: float = 0.0, lazy_reg: int = 1,
                 adversarial: float = 1.0):
        self.disc_input = _choice("model.objective.disc_input", disc_input, DISC_INPUTS)
        self.disc_time = _choice("model.objective.disc_time", disc_time, DISC_TIMES)
        self.r1_gamma = _weight("model.objective.r1_gamma", r1_gamma)
        if isinstance(lazy_reg, bool) or not isinstance(lazy_reg, int) or lazy_reg < 1:
            raise ConfigError(f"model.objective.lazy_reg={lazy_reg!r} is invalid: expected a positive integer "
                              f"(iterations between R1 penalties)")
        self.lazy_reg = lazy_reg
        # true / false switches the term (``ablation.adversarial``), a number weighs it
        self.adversarial = _weight("model.objective.adversarial",
                                   float(adversarial) if isinstance(adversarial, bool) else adversarial)

    # ------------------------------------------------------------------ what D needs
    def discriminator_heads(self) -> dict:
        """Keyword arguments for the discriminator factory: the heads this objective uses."""
        return {"joint": self.joint, "cond_head": False, "aux_head": False}

    # ------------------------------------------------------------------ shared pieces
    def pair(self, parts: GANParts, x0: torch.Tensor):
        """(t, x_prev, x_t): a training pair for every sample of x0."""
        rng = parts.rng
        t = parts.process.sample_times(rng, x0)
        x_prev, x_t = parts.process.q_sample_pairs(x0, t, rng.randn_like(x0), rng.randn_like(x0))
        return t, x_prev, x_t

    def generate(self, parts: GANParts, x_t: torch.Tensor, t: torch.Tensor):
        """(x0', x'_prev): the generator's x0 and its posterior sample of the earlier state."""
        x0_pred = parts.generator(x_t, t, parts.sample_z(x_t))
        return x0_pred, parts.process.q_posterior_sample(x0_pred, x_t, t, parts.rng.randn_like(x_t))

    def discriminate(self, parts: GANParts, x, t, x_t, heads=("logit",)):
        t_d = t if self.disc_time == "pair" else parts.process.prev_time(t)
        return parts.discriminator(x, t_d, x_t if self.joint else None, heads=heads)

    def _scored(self, x0, x_prev):
        return x0 if self.disc_input == "x0" else x_prev

    def real_heads(self) -> tuple[str, ...]:
        return ("logit",)

    def fake_heads(self) -> tuple[str, ...]:
        return ("logit",)

    # ------------------------------------------------------------------ the two steps
    def d_terms(self, parts: GANParts, x0: torch.Tensor, iteration: int = 0) -> dict[str, torch.Tensor]:
        rng = parts.rng
        t, x_prev, x_t = self.pair(parts, x0)
        r1 = self.r1_gamma > 0 and iteration % self.lazy_reg == 0
        x_real = self._scored(x0, x_prev).detach().requires_grad_(r1)
        out_real = self.discriminate(parts, x_real, t, x_t, self.real_heads())
        terms = {"d_real": rng.member_mean(F.softplus(-out_real.logit))}
        if r1:
            terms["r1"] = r1_penalty(out_real.logit, x_real, self.r1_gamma, rng)
        with torch.no_grad():
            x0_fake, x_prev_fake = self.generate(parts, x_t, t)
        out_fake = self.discriminate(parts, self._scored(x0_fake, x_prev_fake), t, x_t, self.fake_heads())
        terms["d_fake"] = rng.member_mean(F.softplus(out_fake.logit))
        terms.update(self.extra_d_terms(parts, x0=x0, x_t=x_t, out_real=out_real, out_fake=out_fake))
        return terms

    def g_terms(self, parts: GANParts, x0: torch.Tensor, iteration: int = 0) -> dict[str, torch.Tensor]:
        """A fresh pair (t, x_t) from the same data batch, as both reference codes do."""
        t, _, x_t = self.pair(parts, x0)
        x0_fake, x_prev_fake = self.generate(parts, x_t, t)
        out = self.discriminate(parts, self._scored(x0_fake, x_prev_fake), t, x_t, self.fake_heads())
        terms = {}
        if self.adversarial > 0:
            terms["g_adv"] = self.adversarial * parts.rng.member_mean(F.softplus(-out.logit))
        terms.update(self.extra_g_terms(parts, t=t, x_t=x_t, x_prev_fake=x_prev_fake, out=out))
        if not terms:
            raise ConfigError("the generator has no loss: set objective.adversarial > 0 or an AFD weight > 0")
        return terms

    def extra_d_terms(self, parts, **kw) -> dict[str, torch.Tensor]:
        return {}

    def extra_g_terms(self, parts, **kw) -> dict[str, torch.Tensor]:
        return {}


class DDGANLoss(GANObjective):
    """DDGAN: joint discriminator D(x_prev, t, x_t); L_D = softplus(−D(real)) + softplus(D(fake)) [+ R1],
    L_G = softplus(−D(fake)) (REFERENCES §4)."""

    joint = True


def afd_cross_entropy(parts: GANParts, x_prev_fake, x_t, t, form: str = "released") -> torch.Tensor:
    """Cross-entropy part of SIDDM's auxiliary forward diffusion: q(x_t | x_prev) = N(a x_prev, b² I)
    with a = sqrt(1−β), b = sqrt(β), so −log q(x_t | x'_prev) is, up to constants, an L2:

    * ``paper``: mean (a x'_prev − x_t)²
    * ``released``: mean (a x'_prev + b ε − x_t)², the posterior sample re-diffused with fresh noise
      ε; its expectation over ε is the paper form plus β per element (same expected gradient).
    """
    a, b = parts.process.q_step_coefficients(t, x_prev_fake)
    mean = a * x_prev_fake
    if form == "released":
        mean = mean + b * parts.rng.randn_like(x_prev_fake)
    return parts.rng.member_mean((mean - x_t).pow(2))


class SIDDMLoss(GANObjective):
    """SIDDM as the paper describes it (REFERENCES §5), marginal discriminator D(x_prev, t):

      L_D = softplus(−D(x_prev)) + softplus(D(x'_prev)) [+ R1]
            + λ_reg ||D_aux(x_prev, t) − x0||²                  (regulariser, real pairs)
            + λ_AFD ||x_t − C_ψ(sg[x'_prev], t)||²               (entropy estimator, if ``entropy``)
      L_G = w_adv softplus(−D(x'_prev)) + λ_AFD AFD_CE(x'_prev, x_t)
            − λ_AFD ||x_t − C_ψ(x'_prev, t)||²                   (entropy, if ``entropy``)

    The entropy min-max is a reconstruction of the paper's C_ψ game, not verified against its text.
    """

    def __init__(self, lambda_afd: float = 1.0, afd_form: str = "released", entropy: bool = True,
                 disc_reg: bool = True, lambda_disc_reg: float = 1.0, adversarial: float = 1.0,
                 disc_input: str = "x_prev", disc_time: str = "pair", r1_gamma: float = 0.0, lazy_reg: int = 1):
        super().__init__(disc_input, disc_time, r1_gamma, lazy_reg, adversarial)
        # the config gives these the values of ``ablation.*`` (conf/objective/siddm.yaml): an error names the key
        # set (``siddm_lab.config.named_as_set``)
        self.afd_form = _choice("model.objective.afd_form", afd_form, AFD_FORMS)
        self.lambda_afd = _weight("model.objective.lambda_afd", lambda_afd)
        self.lambda_disc_reg = _weight("model.objective.lambda_disc_reg", lambda_disc_reg)
        self.uses_afd = self.lambda_afd > 0
        self.uses_entropy = self.uses_afd and bool(entropy)
        self.uses_disc_reg = bool(disc_reg) and self.lambda_disc_reg > 0

    def discriminator_heads(self) -> dict:
        return {"joint": False, "cond_head": self.uses_entropy, "aux_head": self.uses_disc_reg}

    def real_heads(self):
        return ("logit", "aux") if self.uses_disc_reg else ("logit",)

    def fake_heads(self):
        return ("logit", "cond") if self.uses_entropy else ("logit",)

    def extra_d_terms(self, parts, x0, x_t, out_real, out_fake):
        terms, mean = {}, parts.rng.member_mean
        if self.uses_disc_reg:
            terms["disc_reg"] = self.lambda_disc_reg * mean((out_real.aux - x0).pow(2))
        if self.uses_entropy:  # ψ minimises its regression error; x'_prev was drawn without gradient
            terms["entropy_c"] = self.lambda_afd * mean((x_t - out_fake.cond).pow(2))
        return terms

    def extra_g_terms(self, parts, t, x_t, x_prev_fake, out):
        terms = {}
        if self.uses_afd:
            terms["afd_ce"] = self.lambda_afd * afd_cross_entropy(parts, x_prev_fake, x_t, t, self.afd_form)
            if self.uses_entropy:  # the generator maximises C_ψ's error (ψ frozen in this step)
                terms["afd_entropy"] = -self.lambda_afd * parts.rng.member_mean((x_t - out.cond).pow(2))
        return terms


class SIDDMReleasedLoss(GANObjective):
    """SIDDM as the authors' released toy code trains it (REFERENCES §5):

      L_D = softplus(−D(x0, t_prev, x_t·joint)) + softplus(D(x0', t_prev, x_t·joint))
      L_G = softplus(−D(x0', t_prev, x_t·joint)) + afd_weight · mean((sqrt(1−β) x'_prev + sqrt(β) ε − x_t)²)

    with (t_prev, t) the pair's times and x'_prev ~ q(x_prev | x_t, x0'). ``joint=true, afd_weight=0``
    is the script's DDGAN baseline (``--ac_w 0``); ``afd_weight=1`` its SIDDM run (run_MOG.sh).
    """

    def __init__(self, afd_weight: float = 1.0, joint: bool = False, disc_input: str = "x0", disc_time: str = "prev",
                 adversarial: float = 1.0, r1_gamma: float = 0.0, lazy_reg: int = 1):
        super().__init__(disc_input, disc_time, r1_gamma, lazy_reg, adversarial)
        self.afd_weight = _weight("model.objective.afd_weight", afd_weight)
        self.joint = bool(joint)

    def extra_g_terms(self, parts, t, x_t, x_prev_fake, out):
        if self.afd_weight == 0:
            return {}
        return {"afd_ce": self.afd_weight * afd_cross_entropy(parts, x_prev_fake, x_t, t, "released")}


OBJECTIVES = {"ddgan": DDGANLoss, "siddm": SIDDMLoss, "siddm_released": SIDDMReleasedLoss}
