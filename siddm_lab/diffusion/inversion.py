"""Model inversion: find the x_T whose deterministic DDIM decoding (η = 0) reproduces given images.

Minimise L(x_T) = Σ_images mean_pixels (D(x_T) − x_target)² with Adam on x_T, where D is the DDIM chain over
a plan of S timesteps (DEQ-DDIM, Pokle et al. 2022, §1.4 of the seed report). The methods differ in how D and
its gradient are computed:

- ``backprop``: the sequential chain (S network calls), differentiated by backpropagation through all of
  it (memory grows with S).
- ``phantom``: D(x_T) is the fixed point X* of the unrolled chain map F (``DEQSampler``, Anderson, no
  graph); the gradient is that of k damped unrolled steps X ← (1−τ) X + τ F(X; x_T) started at X* (the
  "phantom" gradient; k = ``pg_steps``, τ = ``pg_damping``; the public code uses k = 1, τ = 0.1). With
  k = 1 only the direct dependence of F on x_T is differentiated: an approximate gradient at the cost of
  one batched network call.
- ``ift``: the exact gradient through the fixed point by the implicit function theorem: g solves the
  adjoint fixed point g = ∂L/∂X + (∂F/∂X)ᵀ g (``adjoint_iters`` iterations, one batched vector-Jacobian
  product each; exact after S because ∂F/∂X is strictly lower block-triangular), then ∇_{x_T} L = (∂F/∂x_T)ᵀ g.
  With enough iterations it equals ``backprop``'s gradient.

Per image, the loss is the mean squared error over pixels; the result keeps the lowest loss each image
reached and its x_T, the loss curve, the wall time and the network evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from siddm_lab.diffusion.fixed_point import DEQSampler
from siddm_lab.diffusion.samplers import DDIMSampler, PredictFn, run_chain
from siddm_lab.errors import ConfigError

METHODS = ("backprop", "phantom", "ift")


def decode_backprop(predict: PredictFn, sampler: DDIMSampler, x_T: torch.Tensor) -> torch.Tensor:
    """The sequential deterministic DDIM chain over ``sampler``'s plan, differentiable (keeps the graph)."""
    return run_chain(sampler.clipped(predict), sampler, x_T, sampler.timesteps)


def ift_gradient(predict: PredictFn, deq: DEQSampler, x_T: torch.Tensor, X: torch.Tensor, v: torch.Tensor,
                 iters: int) -> torch.Tensor:
    """∇_{x_T} of ⟨v, x_0*⟩ through the fixed point X* = F(X*; x_T) (X: [S, B, ...], its last state x_0*):
    ``iters`` fixed-point iterations of the adjoint g = e_S v + (∂F/∂X)ᵀ g, then (∂F/∂x_T)ᵀ g."""
    with torch.enable_grad():
        Xr = X.detach().requires_grad_()
        xT = x_T.detach().requires_grad_()
        F = deq.chain_map(predict, xT, Xr)
        rhs = torch.zeros_like(X)
        rhs[-1] = v
        g = rhs
        for _ in range(iters):
            g = rhs + torch.autograd.grad(F, Xr, g, retain_graph=True)[0]
        return torch.autograd.grad(F, xT, g)[0]


class Inversion:
    """Adam on x_T so that the DDIM (η = 0) decoding of x_T matches ``target`` (see the module docstring).

    Args: ``method`` (backprop | phantom | ift), ``iters`` Adam steps, ``lr``, ``pg_steps`` and ``pg_damping``
    (phantom), ``adjoint_iters`` (ift; null = S, exact), ``warm_start`` (DEQ: solve each step's fixed point
    from the previous one instead of from x_T. In the unrolled form the change of x_T reaches the later states
    amplified by up to 1/sqrt(ᾱ_{t_1}) before the ε-terms catch up, so at Adam's step sizes this usually costs
    iterations rather than saving them; off by default). The DEQ
    settings (m, tol, max_iter, ...) come from the ``DEQSampler`` given to ``run``; ``backprop`` uses its plan
    only."""

    def __init__(self, method: str = "phantom", iters: int = 100, lr: float = 0.005, pg_steps: int = 1,
                 pg_damping: float = 0.1, adjoint_iters: int | None = None, warm_start: bool = False):
        if method not in METHODS:
            raise ConfigError(f"invert.method={method!r} is unknown; allowed: {', '.join(METHODS)}")
        for key, v, lo in (("iters", iters, 1), ("pg_steps", pg_steps, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"invert.{key}={v!r} is invalid: expected an integer >= {lo}")
        if adjoint_iters is not None and (isinstance(adjoint_iters, bool) or not isinstance(adjoint_iters, int)
                                          or adjoint_iters < 1):
            raise ConfigError(f"invert.adjoint_iters={adjoint_iters!r} is invalid: expected null (S) or an "
                              f"integer >= 1")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
            raise ConfigError(f"invert.lr={lr!r} is invalid: expected a finite number > 0")
        if isinstance(pg_damping, bool) or not isinstance(pg_damping, (int, float)) or not 0 < pg_damping <= 1:
            raise ConfigError(f"invert.pg_damping={pg_damping!r} is invalid: expected a number in (0, 1]")
        self.method, self.iters, self.lr = method, iters, float(lr)
        self.pg_steps, self.pg_damping, self.adjoint_iters = pg_steps, float(pg_damping), adjoint_iters
        self.warm_start = bool(warm_start)

    def settings(self) -> dict:
        out = {"method": self.method, "iters": self.iters, "lr": self.lr}
        if self.method != "backprop":
            out["warm_start"] = self.warm_start
        if self.method == "phantom":
            out.update(pg_steps=self.pg_steps, pg_damping=self.pg_damping)
        if self.method == "ift":
            out["adjoint_iters"] = self.adjoint_iters
        return out

    def decode(self, predict: PredictFn, sampler: DDIMSampler, x_T: torch.Tensor) -> torch.Tensor:
        """x_0 = D(x_T) without a graph (for the final, exact check of an inverted x_T)."""
        with torch.no_grad():
            return decode_backprop(predict, sampler, x_T)

    def run(self, predict: PredictFn, sampler: DDIMSampler, target: torch.Tensor, x_T: torch.Tensor,
            on_step: Callable[[int, float, float], None] | None = None) -> dict:
        """Invert ``target`` [B, ...] starting from ``x_T`` [B, ...]. Returns {"x_T": best x_T per image,
        "min_loss": [B] lowest loss per image, "curve": mean loss per Adam step, "nfe": network evaluations
        per image (forward; backward passes not counted), "fixed_point_iterations": per step (DEQ)}.
        ``on_step(step, mean loss, mean of the lowest loss per image so far)`` is called after every Adam step
        (step counts from 1), e.g. to report progress of a long inversion."""
        if isinstance(sampler, DDIMSampler) and sampler.stochastic:
            raise ConfigError("model inversion decodes with deterministic DDIM: use sampler=ddim sampler.eta=0 or "
                              "sampler=deq")
        if self.method != "backprop" and not isinstance(sampler, DEQSampler):
            raise ConfigError(f"invert.method={self.method} differentiates through the DEQ fixed point: use "
                              f"sampler=deq (its plan, m, tol, max_iter), or invert.method=backprop")
        S = len(sampler.timesteps)
        z = x_T.detach().clone().requires_grad_()
        opt = torch.optim.Adam([z], lr=self.lr)
        best = torch.full((len(z),), math.inf, device=z.device)
        best_z = z.detach().clone()
        curve, fp_iters, nfe, X = [], [], 0, None
        for _ in range(self.iters):
            opt.zero_grad(set_to_none=True)
            if self.method == "backprop":
                x0 = decode_backprop(predict, sampler, z)
                per_image = (x0 - target).pow(2).flatten(1).mean(1)
                per_image.sum().backward()
                nfe += S
            else:
                if hasattr(sampler, "reset_stats"):
                    sampler.reset_stats()
                X = sampler.trajectory(predict, z.detach(), X.detach() if self.warm_start and X is not None else None)
                fp_iters.append(sampler.last_stats["iterations"])
                nfe += sampler.last_stats["nfe"]
                if self.method == "phantom":
                    with torch.enable_grad():
                        for _k in range(self.pg_steps):
                            X = (1 - self.pg_damping) * X + self.pg_damping * sampler.chain_map(predict, z, X)
                        per_image = (X[-1] - target).pow(2).flatten(1).mean(1)
                        per_image.sum().backward()
                    nfe += self.pg_steps * S
                else:
                    x0 = X[-1]
                    per_image = (x0 - target).pow(2).flatten(1).mean(1)
                    n_pix = x0[0].numel()
                    v = 2 * (x0 - target) / n_pix  # ∂ Σ_b mean (x0_b - target_b)² / ∂x0
                    z.grad = ift_gradient(predict, sampler, z, X, v, self.adjoint_iters or S)
                    nfe += S  # the graph of F for the vector-Jacobian products
            with torch.no_grad():
                loss = per_image.detach()
                better = loss < best
                best = torch.where(better, loss, best)
                best_z[better] = z.detach()[better]
            curve.append(float(loss.mean()))
            if not torch.isfinite(loss).all():
                raise FloatingPointError(f"model inversion diverged (loss {curve[-1]}); lower invert.lr")
            if on_step is not None:
                on_step(len(curve), curve[-1], float(best.mean()))
            opt.step()
        return {"x_T": best_z, "min_loss": best, "curve": curve, "nfe": nfe, "fixed_point_iterations": fp_iters}
