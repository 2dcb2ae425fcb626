"""Distilled students of a DDPM/DDIM teacher (``siddm-distill``): progressive distillation (Salimans & Ho
2022) and one-step knowledge distillation (Luhman & Luhman 2021). The math is in
``siddm_lab.diffusion.distillation``; these modules hold the student, a frozen copy of its teacher and
the round bookkeeping.

A distilled checkpoint is a DDPM checkpoint with a ``teacher.*`` copy: ``siddm-sample`` samples it with
the plan stored in its config (the last round's student plan), or any other.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from siddm_lab.diffusion import DDIMSampler
from siddm_lab.diffusion.distillation import (
    PAIRS_STREAM,
    KnowledgeDistillationLoss,
    ProgressiveDistillationLoss,
    halving_plans,
    knowledge_pairs,
    pairs_generator,
)
from siddm_lab.diffusion.gamma import GammaDiffusion
from siddm_lab.diffusion.subsequences import plan as make_plan
from siddm_lab.errors import ConfigError, renamed
from siddm_lab.models.ddpm import DDPM

log = logging.getLogger(__name__)


class _PerRoundLinearDecay:
    """LambdaLR factor: 1 → 0 linearly within every round of ``steps_per_round`` steps (the paper anneals the
    learning rate to zero in each halving). A class, so the scheduler's state is plain numbers."""

    def __init__(self, steps_per_round: int):
        self.steps_per_round = int(steps_per_round)

    def __call__(self, step: int) -> float:
        return 1.0 - (step % self.steps_per_round) / self.steps_per_round


def linear_decay_per_round(optimizer, steps_per_round: int):
    """``lr_scheduler`` of progressive distillation: linear decay to zero within each round."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _PerRoundLinearDecay(steps_per_round))


class Distillation(DDPM):
    """A student denoiser ``net`` (its output read as ``prediction_type``) and a frozen ``teacher`` of the same
    architecture (read as ``teacher_prediction_type``); both start from the teacher checkpoint's weights
    (``init_from_teacher``, called by ``siddm-distill`` on a fresh run). ``clip_x0``: the teacher's x0 clipping
    in its DDIM steps (null = none)."""

    def __init__(self, net: nn.Module, diffusion, optimizer, lr_scheduler=None, prediction_type: str = "v",
                 teacher_prediction_type: str = "eps", clip_x0: float | None = None, grad_clip: float | None = None,
                 log_every_n_steps: int = 50, data_shape=None):
        super().__init__(net, diffusion, optimizer, lr_scheduler, prediction_type, grad_clip=grad_clip,
                         log_every_n_steps=log_every_n_steps, data_shape=data_shape)
        if isinstance(self.diffusion, GammaDiffusion):
            raise ConfigError("distillation needs a deterministic DDIM teacher of a Gaussian process; this teacher "
                              "was trained with noise=gamma")
        self.teacher = copy.deepcopy(net).requires_grad_(False).eval()
        self.teacher_prediction_type = teacher_prediction_type
        self.clip_x0 = clip_x0

    def init_from_teacher(self, teacher_net: nn.Module) -> None:
        """Student and teacher copy ``teacher_net``'s weights (the teacher checkpoint's, EMA by default)."""
        state = teacher_net.state_dict()
        self.net.load_state_dict(state)
        self.teacher.load_state_dict(state)

    def teacher_output_type(self) -> str:
        """How the teacher's output is read: the teacher checkpoint's parameterisation."""
        return self.teacher_prediction_type

    def teacher_predict(self, x_t, t):
        return self.diffusion.to_x0_eps(self.teacher_output_type(), x_t, t, self.teacher(x_t, t))

    def student_predict(self, x_t, t):
        return self.diffusion.to_x0_eps(self.prediction_type, x_t, t, self.net(x_t, t))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never runs in training mode (dropout)
        return self

    def get_sampler(self, sampler=None, extra=(), what: str | None = None, hint: str | None = None):
        # periodic evaluation samples with the current student's own plan, not the run's final sampler
        return super().get_sampler(self.default_sampler() if sampler is None else sampler, extra, what, hint)

    def denoiser(self, rng=None):
        return replace(super().denoiser(rng), own_sampler=self.default_sampler)

    def student_plan(self) -> list[int]:
        raise NotImplementedError

    def default_sampler(self):
        return DDIMSampler(self.diffusion, eta=0.0, steps=None, clip_x0=self.clip_x0,
                           subsequence={"name": "explicit", "timesteps": self.student_plan()})

    def history_extras(self) -> dict:
        return {"nfe": len(self.student_plan())}

    def _step(self, loss: torch.Tensor) -> None:
        opt = self.optimizers()
        logged = self._update(opt, {"loss": loss}, self.generator, self.grad_clip, "train/loss", counted=True)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        if self.global_step % self.log_every_n_steps == 0:
            self.log("train/loss", logged.detach(), prog_bar=True)


class ProgressiveDistillation(Distillation):
    """Progressive distillation: ``rounds`` halvings of a ``teacher_steps``-step DDIM teacher (plan: the
    sub-sequence ``subsequence``, default trailing so that every student starts at t = T−1), each
    ``steps_per_round`` iterations. The student of round r takes teacher_steps / 2^(r+1) steps; at the start
    of round r+1 it becomes the teacher (its weights copied into ``teacher``) and the optimizer's moments
    are reset. ``weighting``: truncated_snr | snr_plus_one. ``global_step`` counts iterations over all rounds.
    """

    def __init__(self, net: nn.Module, diffusion, optimizer, lr_scheduler=None, prediction_type: str = "v",
                 teacher_prediction_type: str = "eps", teacher_steps: int = 16, rounds: int = 4,
                 steps_per_round: int = 1000, subsequence: dict | None = None, weighting: str = "truncated_snr",
                 clip_x0: float | None = None, grad_clip: float | None = None,
                 log_every_n_steps: int = 50, data_shape=None):
        super().__init__(net, diffusion, optimizer, lr_scheduler, prediction_type, teacher_prediction_type, clip_x0,
                         grad_clip, log_every_n_steps, data_shape)
        if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, int) or steps_per_round < 1:
            raise ConfigError(f"distill.steps_per_round={steps_per_round!r} is invalid: expected a positive integer")
        spec = dict(subsequence or {"name": "trailing"})
        try:
            _, teacher_plan = make_plan(self.diffusion.num_timesteps, teacher_steps, spec)
        except ConfigError as e:
            raise renamed(e, "sampler.steps", "distill.teacher_steps") from None
        self.plans = halving_plans(teacher_plan, rounds)
        self.rounds, self.steps_per_round = rounds, steps_per_round
        self.objectives = [ProgressiveDistillationLoss(p, weighting, clip_x0) for p in self.plans]
        self.round = 0

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round

    def student_plan(self, round_: int | None = None) -> list[int]:
        return self.plans[self.round if round_ is None else round_][::2]

    def history_extras(self) -> dict:
        return {"round": self.round, "nfe": len(self.student_plan())}

    def teacher_output_type(self) -> str:
        # from round 1 on the teacher is the previous round's student
        return self.teacher_prediction_type if self.round == 0 else self.prediction_type

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["distill_round"] = self.round

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.round = int(checkpoint.get("distill_round", 0))

    def on_train_batch_start(self, batch, batch_idx):
        r = min(self.global_step // self.steps_per_round, self.rounds - 1)
        if r > self.round:  # the finished student becomes the next round's teacher
            self.teacher.load_state_dict(self.net.state_dict())
            opt = self.optimizers()
            opt = getattr(opt, "optimizer", opt)
            opt.state.clear()
            self.round = r
            log.info("distillation round %d at step %d: teacher %d steps -> student %d steps", r, self.global_step,
                     len(self.plans[r]), len(self.student_plan()))

    def training_step(self, batch, batch_idx):
        loss = self.objectives[self.round](self.student_predict, self.teacher_predict, self.diffusion, batch)
        self._step(loss)

    def validation_step(self, batch, batch_idx):
        # fixed student steps and noise per batch: comparable across evaluations within a round
        g = torch.Generator().manual_seed(10_000 + batch_idx)
        index = torch.randint(0, len(self.student_plan()), (batch.shape[0],), generator=g)
        loss = self.objectives[self.round](self.student_predict, self.teacher_predict, self.diffusion, batch,
                                           index=index, generator=g)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        return loss


class KnowledgeDistillation(Distillation):
    """One-step knowledge distillation: ``num_pairs`` pairs (x_T, teacher x0) decoded once by the teacher's
    deterministic DDIM over ``teacher_steps`` steps (``subsequence``; the teacher's x0 clipping), cached at
    ``pairs_path`` (the run folder's ``kd_pairs.pt``; reused on resume; null: not cached), and a student
    x_T → x0 (prediction x0 at t = T−1) trained by regression on random batches of them. Its sampler is the
    single step T−1 → data."""

    def __init__(self, net: nn.Module, diffusion, optimizer, lr_scheduler=None, prediction_type: str = "x0",
                 teacher_prediction_type: str = "eps", teacher_steps: int = 50, subsequence: dict | None = None,
                 num_pairs: int = 10000, pairs_seed: int = 0, pairs_batch_size: int = 500, clip_x0: float | None = None,
                 grad_clip: float | None = None, pairs_path: str | None = None, log_every_n_steps: int = 50,
                 data_shape=None):
        super().__init__(net, diffusion, optimizer, lr_scheduler, prediction_type, teacher_prediction_type, clip_x0,
                         grad_clip, log_every_n_steps, data_shape)
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
            raise ConfigError(f"distill.num_pairs={num_pairs!r} is invalid: expected a positive integer")
        spec = dict(subsequence or {"name": "uniform"})
        try:
            self.teacher_sampler = DDIMSampler(self.diffusion, eta=0.0, steps=teacher_steps, subsequence=spec,
                                               clip_x0=clip_x0)
        except ConfigError as e:
            raise renamed(e, "sampler.steps", "distill.teacher_steps") from None
        self.num_pairs, self.pairs_seed, self.pairs_batch_size = num_pairs, pairs_seed, pairs_batch_size
        self.pairs_path = None if pairs_path is None else Path(pairs_path)
        self.objective_kd = KnowledgeDistillationLoss()
        self.pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def student_plan(self) -> list[int]:
        return [self.diffusion.num_timesteps - 1]

    def pairs_settings(self) -> dict:
        return {"num_pairs": self.num_pairs, "seed": self.pairs_seed, "noise_stream": PAIRS_STREAM,
                "teacher_timesteps": self.teacher_sampler.timesteps, "clip_x0": self.clip_x0,
                "shape": list(self.data_shape)}

    def on_fit_start(self) -> None:
        if self.pairs is None:
            self.pairs = self.load_or_make_pairs()

    def load_or_make_pairs(self):
        path = self.pairs_path
        settings = self.pairs_settings()
        if path is not None and path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("settings") != settings:
                raise ConfigError(f"{path} holds teacher pairs of other settings ({stored.get('settings')}), not "
                                  f"{settings}; move it away or use another run folder")
            log.info("knowledge distillation: %d cached teacher pairs from %s", len(stored["x_T"]), path)
            return stored["x_T"], stored["x0"]
        log.info("knowledge distillation: decoding %d teacher pairs (DDIM, %d steps)", self.num_pairs,
                 self.teacher_sampler.nfe)
        g = pairs_generator(self.pairs_seed)
        pairs = knowledge_pairs(self.teacher_predict, self.teacher_sampler, self.num_pairs, self.data_shape, g,
                                self.pairs_batch_size, device=self.device)
        if path is not None and self.trainer.is_global_zero:
            tmp = path.with_suffix(".tmp")
            torch.save({"x_T": pairs[0], "x0": pairs[1], "settings": settings}, tmp)
            tmp.replace(path)
        return pairs

    def _batch(self, n: int, generator: torch.Generator | None = None):
        idx = torch.randint(0, self.num_pairs, (n,), generator=generator)
        return self.pairs[0][idx].to(self.device), self.pairs[1][idx].to(self.device)

    def training_step(self, batch, batch_idx):
        x_T, x0 = self._batch(batch.shape[0])
        self._step(self.objective_kd(self.student_predict, x_T, x0, self.diffusion.num_timesteps))

    def validation_step(self, batch, batch_idx):
        if self.pairs is None:
            return None
        x_T, x0 = self._batch(batch.shape[0], torch.Generator().manual_seed(10_000 + batch_idx))
        loss = self.objective_kd(self.student_predict, x_T, x0, self.diffusion.num_timesteps)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        return loss
