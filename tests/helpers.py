"""Compose the real configs and run the train task in-process."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from siddm_lab.config import compose

FAST = [
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


def compose_cfg(overrides: list[str], output_dir: Path | None = None, return_hydra_config: bool = False):
    return compose(overrides, "train", output_dir, return_hydra_config)


def run_train(overrides: list[str], output_dir: Path):
    from siddm_lab.cli.train import train

    cfg = compose_cfg(FAST + overrides, output_dir)
    return train(cfg), cfg


class FailAt(Callback):
    """Raises at the start of training step ``step`` on rank ``rank`` (every rank when null): a crash
    injected into a real run, added with ``+callbacks.fail._target_=tests.helpers.FailAt
    +callbacks.fail.step=N [+callbacks.fail.rank=R]``."""

    def __init__(self, step: int, rank: int | None = None):
        self.step, self.rank = int(step), rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            raise RuntimeError(f"injected failure on rank {trainer.global_rank} at step {self.step}")


def use_float64_schedule(scheduler, diffusion):
    """Give a diffusers scheduler our float64 schedule (for float64 parity checks)."""
    import torch

    scheduler.betas = diffusion.betas.clone()
    scheduler.alphas = diffusion.alphas.clone()
    scheduler.alphas_cumprod = diffusion.alphas_cumprod.clone()
    one = torch.tensor(1.0, dtype=torch.float64)
    scheduler.final_alpha_cumprod = one  # DDIMScheduler
    scheduler.one = one  # DDPMScheduler
    return scheduler


def eps_predictor(diffusion, model, clip_x0: float | None = None):
    """``predict(x_t, t) -> (x0', ε')`` for an ε-predicting ``model``, as the models build it."""

    def predict(x, t):
        return diffusion.to_x0_eps("eps", x, t, model(x, t), clip_x0=clip_x0)

    return predict


def read_wandb_offline_run(run_dir, settle_seconds: float = 20.0) -> dict:
    """What an offline W&B run recorded (``_read_wandb_offline_run``). W&B's service process may still be
    writing the file when ``wandb.finish()`` has returned in the job, so the file is read again (for up to
    ``settle_seconds``) until it holds the run record."""
    import time

    deadline = time.monotonic() + settle_seconds
    while True:
        rec = _read_wandb_offline_run(run_dir)
        if rec["run"] is not None or time.monotonic() > deadline:
            return rec
        time.sleep(0.5)


def _read_wandb_offline_run(run_dir) -> dict:
    """What an offline W&B run recorded (its ``run-*.wandb`` file, LevelDB-log framed protobuf
    records): the run's name/group/job_type/tags, config keys, history keys, summary keys and
    media files."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    block, pos, buf, records = 32768, 7, b"", []  # 7-byte ':W&B' header, then 32 KiB blocks
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            break
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST chunk
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    out = {"run": None, "config": set(), "history": set(), "summary": set(),
           "media": sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*.png"))}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"name": r.display_name, "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags),
                          "project": r.project}
            out["config"] |= {i.key for i in r.config.update}
        elif kind == "config":
            out["config"] |= {i.key for i in rec.config.update}
        elif kind == "history":
            out["history"] |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
        elif kind == "summary":
            out["summary"] |= {i.key or "/".join(i.nested_key) for i in rec.summary.update}
    return out
