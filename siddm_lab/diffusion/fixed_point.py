"""Parallel sampling: the deterministic DDIM chain solved as a fixed point over all its timesteps.

DEQ-DDIM (Pokle et al. 2022). With the plan t_1 > ... > t_S (``DDIMSampler``'s timesteps) and η = 0,
the chain x_i = h_i(x_{i-1}) (x_0 = x_T; h_i one DDIM step from t_i to t_{i+1}, t_{S+1} = -1 the data)
is the fixed point X = F(X) of X = [x_1, ..., x_S] with

    F(X) = [h_1(x_T), h_2(x_1), ..., h_S(x_{S-1})],

one batched network call on all S states at once. The solvers iterate the same map in its unrolled form
(``chain_map``, the form of DEQ-DDIM's and ParaDiGMS's code): every state written as x_T carried by the
linear part of the steps plus the sum of the steps' ε-terms, so that x_T reaches every state in one
iteration. Plain iteration of either form (Picard) reaches the sequential result after at most S
iterations (x_i is exact after i); on the unrolled form it and Anderson acceleration (memory m) usually
need far fewer. ``PicardSampler`` iterates F on a sliding window (ParaDiGMS, Shih et al. 2023)
for chains too long to batch at once. Both report their accounting in ``last_stats``: solver
iterations (sequential depth), total network evaluations, residual per iteration.
"""

from __future__ import annotations

import torch

from siddm_lab.diffusion.samplers import DDIMSampler, PredictFn, as_denoiser
from siddm_lab.errors import ConfigError


def anderson(f, x0: torch.Tensor, m: int = 5, lam: float = 1e-4, beta: float = 1.0, tol: float = 1e-4,
             max_iter: int = 50):
    """Anderson acceleration for x = f(x), batched over the first dim: x0 [B, n].

    Keeps the last m iterates and residuals g_k = f(x_k) - x_k, solves min ||Σ α_k g_k|| s.t. Σ α_k = 1
    (ridge ``lam`` times the residuals' mean square) per sample and steps
    x ← β Σ α_k f(x_k) + (1-β) Σ α_k x_k. Stops when the relative residual ||f(x) - x|| / ||f(x)||
    (largest over the batch) is below ``tol``.
    Returns (x, residuals per iteration, iterations)."""
    check_anderson(m, beta, tol, max_iter)
    B, n = x0.shape
    X = torch.zeros(B, m, n, dtype=x0.dtype, device=x0.device)
    F = torch.zeros_like(X)
    X[:, 0], F[:, 0] = x0, f(x0)
    residuals = [_rel(F[:, 0], X[:, 0])]
    k = 1
    while residuals[-1] >= tol and k < max_iter:
        n_k = min(k, m)
        G = F[:, :n_k] - X[:, :n_k]
        H = torch.zeros(B, n_k + 1, n_k + 1, dtype=x0.dtype, device=x0.device)
        H[:, 0, 1:] = H[:, 1:, 0] = 1
        GG = G @ G.transpose(1, 2)
        # ridge relative to the residuals' scale, so that it stays a regulariser as they shrink
        scale = GG.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)[:, None, None]
        H[:, 1:, 1:] = GG + lam * scale * torch.eye(n_k, dtype=x0.dtype, device=x0.device)[None]
        y = torch.zeros(B, n_k + 1, 1, dtype=x0.dtype, device=x0.device)
        y[:, 0] = 1
        alpha = torch.linalg.solve(H, y)[:, 1:n_k + 1, 0]  # [B, n_k]
        x_new = beta * (alpha[:, None] @ F[:, :n_k])[:, 0] + (1 - beta) * (alpha[:, None] @ X[:, :n_k])[:, 0]
        X[:, k % m], F[:, k % m] = x_new, f(x_new)
        residuals.append(_rel(F[:, k % m], X[:, k % m]))
        k += 1
    return F[:, (k - 1) % m], residuals, k


def check_anderson(m, beta, tol, max_iter) -> None:
    """The Anderson settings, named by their sampler keys."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"sampler.m={m!r} is invalid: expected an integer >= 1 (Anderson memory)")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ConfigError(f"sampler.tol={tol!r} is invalid: expected a number > 0")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta <= 1:
        raise ConfigError(f"sampler.damping={beta!r} is invalid: expected a number in (0, 1]")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"sampler.max_iter={max_iter!r} is invalid: expected an integer >= 1")


def _rel(fx: torch.Tensor, x: torch.Tensor) -> float:
    return float(((fx - x).norm(dim=-1) / (fx.norm(dim=-1) + 1e-8)).max())


class _FixedPointDDIM(DDIMSampler):
    """Deterministic DDIM (η = 0) over a plan, with the chain map F of the module docstring."""

    abstract = True
    requires = DDIMSampler.requires | {"deterministic"}

    def __init__(self, diffusion, steps: int | None = None, subsequence=None, clip_x0: float | None = None,
                 tol: float = 1e-4, max_iter: int | None = None, chunk: int | None = None,
                 form: str = "unrolled"):
        super().__init__(diffusion, 0.0, steps, subsequence, clip_x0)
        if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0):
            raise ConfigError(f"sampler.tol={tol!r} is invalid: expected a number > 0")
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
            raise ConfigError(f"sampler.max_iter={max_iter!r} is invalid: expected null (S) or an integer >= 1")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ConfigError(f"sampler.chunk={chunk!r} is invalid: expected null or an integer >= 1")
        self.tol, self.chunk = float(tol), chunk
        # Plain iteration is exact after S iterations (the chain's Jacobian is block lower-triangular);
        # Anderson mixes its history and is not, so its default allows 3 S.
        self.max_iter = max_iter if max_iter is not None else 3 * self.nfe
        nxt = self.timesteps[1:] + [-1]
        coefs = [self.coefficients(t, s) for t, s in zip(self.timesteps, nxt)]
        self._c_x0 = torch.tensor([c[0] for c in coefs], dtype=torch.float64)
        self._c_eps = torch.tensor([c[1] for c in coefs], dtype=torch.float64)
        ab_t = torch.stack([diffusion.alpha_bar(t) for t in self.timesteps]).double()
        ab_s = torch.stack([diffusion.alpha_bar(s) for s in nxt]).double()
        self._inv_sqrt_ab_t, self._inv_sqrt_ab_s = ab_t.rsqrt(), ab_s.rsqrt()
        self._sigma_t, self._sigma_s = ((1 - ab_t) / ab_t).sqrt(), ((1 - ab_s) / ab_s).sqrt()
        if form not in ("unrolled", "sequential"):
            raise ConfigError(f"sampler.form={form!r} is invalid: expected 'unrolled' or 'sequential'")
        self.form = form
        self.last_stats: dict = {}
        self.history: list[dict] = []  # last_stats of every call since reset_stats()

    def chain_map(self, predict: PredictFn, x_T: torch.Tensor, X: torch.Tensor, index: slice | None = None,
                  form: str | None = None):
        """F(X)[index] for X [S, B, ...] (states after each step): one network call per state, batched
        over the states of ``index`` (default all), in chunks of ``chunk`` states.

        ``form="sequential"``: state i is one DDIM step from state i-1 (F of the module docstring).
        ``form="unrolled"`` (default, DEQ-DDIM's and ParaDiGMS's form): the same steps summed from the
        window's anchor a (x_T, or the state before ``index``). Writing a step as x_i = A_i x_{i-1} + r_i(x_{i-1})
        with A_i = sqrt(ᾱ_{s_i} / ᾱ_{t_i}) (the linear part; ᾱ of the step's end s_i and start t_i),

            x_i = sqrt(ᾱ_{s_i}) · (x_a / sqrt(ᾱ_{t_a}) + Σ_{a<j≤i} r_j(x_{j-1}) / sqrt(ᾱ_{s_j})).

        Both have the same fixed point (the sequential DDIM chain), but the unrolled form carries x_a to every
        state in one iteration, so solvers converge in far fewer iterations, and x_i depends on x_a directly,
        which is what the one-step ("phantom") gradient of ``invert`` differentiates."""
        form = form or self.form
        S = len(self.timesteps)
        idx = range(S)[index] if index is not None else range(S)
        prev = torch.cat([x_T[None], X[:-1]])[idx.start:idx.stop]  # x_{i-1} for i in idx
        out = []
        step = self.chunk or len(prev)
        for a in range(0, len(prev), step):
            xs = prev[a:a + step]
            k = xs.shape[0]
            ts = torch.tensor(self.timesteps[idx.start + a: idx.start + a + k], device=x_T.device)
            flat = xs.reshape(k * xs.shape[1], *xs.shape[2:])
            t = ts.repeat_interleave(xs.shape[1])
            x0, eps = self.clipped(predict)(flat, t)
            shape = (k,) + (1,) * (xs.dim() - 1)
            c0 = self._c_x0[idx.start + a: idx.start + a + k].to(x_T).reshape(shape)
            ce = self._c_eps[idx.start + a: idx.start + a + k].to(x_T).reshape(shape)
            if form == "unrolled":
                out.append(self._delta_y(idx.start + a, k, xs, x0.reshape(xs.shape), eps.reshape(xs.shape)))
            else:
                out.append(c0 * x0.reshape(xs.shape) + ce * eps.reshape(xs.shape))
        out = torch.cat(out)
        if form == "sequential":
            return out
        if form != "unrolled":
            raise ConfigError(f"sampler.form={form!r} is invalid: expected 'unrolled' or 'sequential'")
        shape = (len(idx),) + (1,) * (out.dim() - 1)
        anchor = prev[0].double() * self._inv_sqrt_ab_t[idx.start]
        sqrt_ab_s = (1 / self._inv_sqrt_ab_s[idx.start:idx.stop]).to(x_T.device).reshape(shape)
        return (sqrt_ab_s * (anchor[None] + out.cumsum(0))).to(x_T.dtype)

    def _delta_y(self, first: int, k: int, x_t, x0, eps) -> torch.Tensor:
        """r_j / sqrt(ᾱ_{s_j}) = y_{s_j} - y_{t_j} (y = x / sqrt(ᾱ)) for steps first..first+k-1, in float64 and
        without cancellation: (σ_s - σ_t) ε' with σ = sqrt((1-ᾱ)/ᾱ), or, with x0' clipped (ε' re-derived from
        it), (1 - σ_s/σ_t)(x0' - y_t). Computing it as x_s/sqrt(ᾱ_s) - x_t/sqrt(ᾱ_t) in float32 would amplify
        rounding by up to 1/sqrt(ᾱ_{t_1}) (~150 at T = 1000)."""
        shape = (k,) + (1,) * (x_t.dim() - 1)
        sig_t = self._sigma_t[first:first + k].to(x_t.device).reshape(shape)
        sig_s = self._sigma_s[first:first + k].to(x_t.device).reshape(shape)
        if self.clip_x0 is None:
            return (sig_s - sig_t) * eps.double()
        y_t = x_t.double() * self._inv_sqrt_ab_t[first:first + k].to(x_t.device).reshape(shape)
        return (1 - sig_s / sig_t) * (x0.double() - y_t)

    def reset_stats(self) -> None:
        self.history = []

    def _record(self, stats: dict) -> None:
        self.last_stats = stats
        self.history.append(stats)

    def settings(self) -> dict:
        """The plan and solver settings, and the accounting of the calls since ``reset_stats`` (batches):
        ``iterations`` = ``depth`` (solver iterations, i.e. sequential network calls, of the deepest batch),
        ``nfe`` (network evaluations per sample, mean over batches), the worst final ``residual``, whether
        every batch ``converged``, and ``residuals`` per iteration (of the first batch)."""
        out = {**super().settings(), "tol": self.tol, "form": self.form}
        h = self.history
        if h:
            out.update(iterations=max(s["iterations"] for s in h), depth=max(s["iterations"] for s in h),
                       nfe=sum(s["nfe"] for s in h) / len(h), residual=max(s["residual"] for s in h),
                       converged=all(s["converged"] for s in h), residuals=h[0]["residuals"])
        return out


class DEQSampler(_FixedPointDDIM):
    """The whole DDIM trajectory as one fixed point solved with Anderson acceleration (DEQ-DDIM).

    Args (besides the plan): ``m`` Anderson memory, ``damping`` β, ``tol`` on ||F(X) − X|| / ||F(X)||,
    ``max_iter`` (null = 3 S), ``chunk`` (states per network call)."""

    name = "deq"

    def __init__(self, diffusion, steps: int | None = None, subsequence=None, clip_x0: float | None = None,
                 m: int = 5, damping: float = 1.0, tol: float = 1e-4, max_iter: int | None = None,
                 chunk: int | None = None, form: str = "unrolled"):
        super().__init__(diffusion, steps, subsequence, clip_x0, tol, max_iter, chunk, form)
        check_anderson(m, damping, tol, self.max_iter)
        self.m, self.damping = m, float(damping)

    @torch.no_grad()
    def trajectory(self, predict: PredictFn, x_T: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """All S states X* [S, B, ...] of the fixed point (the last is the sample), solved from ``init``
        [S, B, ...] (default every state = x_T; a nearby fixed point, as in inversion, saves iterations)."""
        S, B = len(self.timesteps), x_T.shape[0]
        shape = (S, *x_T.shape)

        def f(z):  # z [B, S·n]: per sample, all its states
            X = z.reshape(B, S, -1).transpose(0, 1).reshape(shape)
            return self.chain_map(predict, x_T, X).reshape(S, B, -1).transpose(0, 1).reshape(B, -1)

        start = x_T[None].expand(shape) if init is None else init
        z0 = start.reshape(S, B, -1).transpose(0, 1).reshape(B, -1).clone()
        z, residuals, iters = anderson(f, z0, self.m, beta=self.damping, tol=self.tol, max_iter=self.max_iter)
        self._record({"iterations": iters, "nfe": iters * S, "residual": residuals[-1], "residuals": residuals,
                      "converged": residuals[-1] < self.tol})
        return z.reshape(B, S, -1).transpose(0, 1).reshape(shape)

    def sample(self, denoiser, x_T: torch.Tensor, rng=None, progress: bool = False) -> torch.Tensor:
        return self.trajectory(as_denoiser(denoiser, self.diffusion).x0_eps, x_T)[-1]


class PicardSampler(_FixedPointDDIM):
    """Picard iterations of the chain map on a sliding window of ``window`` states (ParaDiGMS): each
    iteration updates the window's states from their predecessors in one batched call; the window slides
    past every leading state whose update changed it by less than ``tol`` (relative)."""

    name = "picard"

    def __init__(self, diffusion, steps: int | None = None, subsequence=None, clip_x0: float | None = None,
                 window: int | None = None, tol: float = 1e-4, max_iter: int | None = None,
                 chunk: int | None = None, form: str = "unrolled"):
        super().__init__(diffusion, steps, subsequence, clip_x0, tol, max_iter, chunk, form)
        S = len(self.timesteps)
        window = S if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= S:
            raise ConfigError(f"sampler.window={window!r} is invalid: expected null (all S={S} states) or an "
                              f"integer in 1..{S}")
        self.window = window
        if max_iter is None:
            self.max_iter = S  # a window of one state advances one state per iteration

    @torch.no_grad()
    def sample(self, denoiser, x_T: torch.Tensor, rng=None, progress: bool = False) -> torch.Tensor:
        predict = as_denoiser(denoiser, self.diffusion).x0_eps
        S = len(self.timesteps)
        X = x_T[None].expand(S, *x_T.shape).clone()
        start, iters, nfe, residuals = 0, 0, 0, []
        while start < S and iters < self.max_iter:
            stop = min(start + self.window, S)
            new = self.chain_map(predict, x_T, X, slice(start, stop))
            change = (new - X[start:stop]).flatten(2).norm(dim=-1) / (new.flatten(2).norm(dim=-1) + 1e-8)
            X[start:stop] = new
            iters, nfe = iters + 1, nfe + (stop - start)
            worst = change.max(dim=1).values  # per state, over the batch
            residuals.append(float(worst.max()))
            # the first state of the window is exact (its predecessor is); then every converged one
            done = 1
            while start + done < stop and worst[done] < self.tol:
                done += 1
            start += done
        self._record({"iterations": iters, "nfe": nfe, "residual": residuals[-1] if residuals else 0.0,
                      "residuals": residuals, "converged": start >= S})
        return X[-1]
