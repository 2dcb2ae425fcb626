"""Periodic evaluation during training (``callbacks.evaluation``): at every validation, sample the model
with the run's sampler, score the samples with the data's metrics (``siddm_lab.evaluation.score``), log
them as ``val/<metric>``, append them to ``history.jsonl`` and save the sample plot under ``samples/``.

It runs after the EMA callback has swapped the averaged weights in (``build_callbacks`` orders it after
every weight-averaging callback), on every rank (each draws its share of the samples, rank 0 scores
them), and its time is left out of the model's training time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging

from siddm_lab.errors import ConfigError


class PeriodicEvaluation(L.Callback):
    """Args:
        num_samples: samples drawn at each validation for the data's metrics (0 = off).
        sampler: the sampler (a ``conf/sampler`` partial, bound to the model's process in ``setup``; null =
            the model's default sampler; a distilled student samples its current plan).
        seed: the seed of the samples (the same x_T and noise at every evaluation: curves compare like with
            like).
        out_dir: where ``history.jsonl`` and ``samples/step_<N>.png`` go (null: nothing is written).
    """

    def __init__(self, num_samples: int = 1000, sampler=None, seed: int = 1234, out_dir: str | None = None):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ConfigError(f"callbacks.evaluation.num_samples={num_samples!r} is invalid: expected an integer "
                              f">= 0 (0 = no periodic evaluation)")
        self.num_samples, self.sampler_factory, self.seed = num_samples, sampler, int(seed)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.sampler = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Bind the sampler to the model and check it fits, before any training."""
        if self.num_samples:
            self.sampler = pl_module.get_sampler(self.sampler_factory)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.num_samples == 0:
            return
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "save_samples"):
            return
        self._check_order(trainer)
        from siddm_lab.evaluation import score

        with pl_module.untimed() as clock:
            sampler = pl_module.get_sampler(self.sampler_factory)
            samples = pl_module.sample_distributed(self.num_samples, seed=self.seed, sampler=sampler)
            if not trainer.is_global_zero:
                return
            sample_seconds = time.perf_counter() - clock.start
            per_member = score(pl_module, samples, dm, self.out_dir, stem=f"step_{pl_module.global_step:07d}",
                               title=f"iteration {pl_module.global_step}", subdir="samples")
            hidden = ("seed", "dir", "num_samples", "png")
            for r in per_member:
                if r["dir"] is None:
                    continue
                metrics = {k: v for k, v in r.items() if k not in hidden}
                append_history(r["dir"], {"iteration": int(pl_module.global_step), "train_seconds": clock.train_seconds,
                                          "sample_seconds": sample_seconds, **pl_module.history_extras(), **metrics})
                for logger in pl_module.loggers:
                    if hasattr(logger, "log_image") and (r["seed"] is None or r["seed"] == pl_module.member_seeds[0]):
                        logger.log_image(key="val/samples", images=[str(r["png"])], step=pl_module.global_step)
            names = [k for k in per_member[0] if k not in hidden]
            logged = {f"val/{k}": sum(r[k] for r in per_member) / len(per_member) for k in names}
            if pl_module.members is not None:
                logged.update({f"val/seed_{r['seed']}/{k}": r[k] for r in per_member for k in names})
            logged["val/sample_seconds"] = sample_seconds
            logged["val/train_seconds"] = clock.train_seconds
            pl_module.log_dict(logged, on_epoch=True, sync_dist=False, rank_zero_only=True)

    def _check_order(self, trainer) -> None:
        """The evaluation must see the averaged weights: every weight-averaging callback runs before it."""
        callbacks = list(trainer.callbacks)
        mine = callbacks.index(self)
        late = [type(c).__name__ for c in callbacks[mine + 1:] if isinstance(c, WeightAveraging)]
        if late:
            raise ConfigError(f"callbacks: {', '.join(late)} comes after the periodic evaluation, which would score "
                              f"the raw weights: build the callbacks with siddm_lab.utils.loggers.build_callbacks")


def append_history(out_dir, row: dict) -> Path:
    """One line of ``history.jsonl``: the metrics of a periodic evaluation with the iteration and the
    training time at which they were taken (``siddm-collect --curves`` draws them)."""
    path = Path(out_dir) / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return path
