"""``siddm-sample`` / ``python -m siddm_lab.sample``: sample a trained checkpoint.

One checkpoint, any sampler: ``sampler=ddim|ddpm``, ``sampler.steps`` (S), ``sampler.eta``,
``subsequence=...``, ``seed``. Writes ``samples.npz``, ``samples.png``, ``metrics.json`` (the
dataset's metrics, NFE, wall time, settings) and ``config.yaml`` into the run folder; a Hydra
multirun (``-m``) over sampler settings gives one folder per setting.

Modes: ``sample``; ``interpolate`` (slerp between latents, decoded deterministically: a strip
per pair); ``reconstruct`` (DDIM-invert real data and decode it back; reports the error).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from siddm_lab.cli.common import (
    CONF_DIR,
    log,
    run_identity,
    user_errors,
    wandb_log_job,
    write_json,
    write_resolved_config,
)
from siddm_lab.config import validate
from siddm_lab.diffusion import ddim_invert, sample_loop, slerp
from siddm_lab.errors import ConfigError
from siddm_lab.models.base import sampler_and_timesteps
from siddm_lab.models.loading import load_model

MODES = ("sample", "interpolate", "reconstruct")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use device=cpu or auto")
    return dev


def _datamodule(run_cfg: DictConfig, data_dir):
    dcfg = run_cfg.dataset
    if data_dir is not None and "reader" in dcfg and "root" in dcfg.reader:
        with open_dict(dcfg):
            dcfg.reader.root = str(data_dir)
    return instantiate(dcfg)


def sample(cfg: DictConfig) -> dict:
    validate(cfg)
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is unknown; allowed: {', '.join(MODES)}")
    out_dir = Path(cfg.paths.output_dir)
    write_resolved_config(cfg, out_dir)
    device = _device(cfg.device)
    model, run_cfg = load_model(cfg.ckpt, cfg.weights, device, cfg.get("member"))
    T = model.diffusion.num_timesteps
    if cfg.sampler.name == "generator":
        if not hasattr(model, "objective"):
            raise ConfigError("sampler=generator runs a diffusion GAN's generator chain; this checkpoint is a "
                              f"{type(model).__name__}: use sampler=ddim or sampler=ddpm")
        return sample_generator_chain(model, run_cfg, cfg, out_dir)
    if getattr(model, "continuous", False):
        raise ConfigError("this checkpoint is a continuous-time diffusion GAN: sample it with sampler=generator "
                          "(sampler.steps = K generator steps, any K >= 1)")
    if cfg.sampler.steps is not None and cfg.sampler.steps > T:
        raise ConfigError(f"sampler.steps={cfg.sampler.steps} is larger than the checkpoint's schedule (T={T}); "
                          f"allowed: 1..{T}")
    sampling = OmegaConf.to_container(cfg.sampler, resolve=True)
    model.sampling = {**model.sampling, "clip_x0": sampling.get("clip_x0"), "batch_size": int(cfg.batch_size)}
    sampler, timesteps = sampler_and_timesteps(model.diffusion, sampling,
                                               OmegaConf.to_container(cfg.subsequence, resolve=True))
    dm = _datamodule(run_cfg, cfg.data_dir)
    info = {
        "ckpt": str(cfg.ckpt), "model": type(model).__name__, "T": T, "sampler": sampling["name"],
        "eta": sampling.get("eta"), "variance_type": sampling.get("variance_type"),
        "subsequence": cfg.subsequence.name, "steps": sampling.get("steps"), "nfe": len(timesteps),
        "seed": int(cfg.seed), "weights": cfg.weights, "train_step": model.global_step_at_save,
    }
    g = torch.Generator().manual_seed(int(cfg.seed))
    title = f"{info['model']} {sampling['name']} NFE={len(timesteps)}"
    if sampling["name"] == "ddim":
        title += f" eta={sampling.get('eta')}"

    if cfg.mode == "sample":
        t0 = time.perf_counter()
        samples = model.sample(int(cfg.num_samples), generator=g, sampler=sampler, timesteps=timesteps,
                               batch_size=int(cfg.batch_size), progress=bool(cfg.progress))
        info["sample_seconds"] = time.perf_counter() - t0
        info["num_samples"] = len(samples)
        if cfg.metrics:
            info.update(dm.evaluate(samples, strict=True))
        dm.save_samples(samples, out_dir, stem="samples", title=title)
    elif cfg.mode == "interpolate":
        info.update(interpolate(model, sampler, timesteps, dm, cfg, g, out_dir, title))
    else:
        info.update(reconstruct(model, timesteps, dm, cfg, out_dir, title))
    write_json(out_dir / "metrics.json", info)
    if cfg.get("wandb"):
        name, tags = run_identity(cfg)
        wandb_log_job(job_type="sample", group=str(cfg.task_name), name=name, tags=tags,
                      config={**OmegaConf.to_container(cfg, resolve=True), "checkpoint": info}, metrics=info,
                      images=sorted(out_dir.glob("*.png")), out_dir=out_dir)
    shown = {k: v for k, v in info.items() if isinstance(v, (int, float)) and k not in ("seed", "T", "train_step")}
    log.info("results: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    log.info("outputs in %s", out_dir)
    return info


def sample_generator_chain(model, run_cfg, cfg: DictConfig, out_dir: Path) -> dict:
    """A diffusion GAN's generator chain with K = ``sampler.steps`` steps (null = its T; any K >= 1 in
    continuous time); step samplers and sub-sequences do not apply."""
    if cfg.mode != "sample":
        raise ConfigError(f"mode={cfg.mode} needs a deterministic step sampler; a diffusion GAN's chain is "
                          f"stochastic (its latents): use mode=sample")
    K = cfg.sampler.steps
    dm = _datamodule(run_cfg, cfg.data_dir)
    g = torch.Generator().manual_seed(int(cfg.seed))
    t0 = time.perf_counter()
    samples = model.sample(int(cfg.num_samples), generator=g, batch_size=int(cfg.batch_size), steps=K)
    info = {"ckpt": str(cfg.ckpt), "model": type(model).__name__, "T": model.diffusion.num_timesteps,
            "sampler": "generator_chain", "steps": K or model.diffusion.num_timesteps,
            "nfe": K or model.diffusion.num_timesteps, "seed": int(cfg.seed), "weights": cfg.weights,
            "member": cfg.get("member"), "train_step": model.global_step_at_save,
            "sample_seconds": time.perf_counter() - t0, "num_samples": len(samples)}
    if cfg.metrics:
        info.update(dm.evaluate(samples, strict=True))
    dm.save_samples(samples, out_dir, stem="samples", title=f"{info['model']} K={info['steps']}")
    write_json(out_dir / "metrics.json", info)
    log.info("results: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
                                      if isinstance(v, (int, float))))
    return info


def _deterministic(sampler) -> bool:
    return not getattr(sampler, "stochastic", True)


def interpolate(model, sampler, timesteps, dm, cfg, g, out_dir: Path, title: str) -> dict:
    """Strips of slerp(z1, z2, α) decoded with the sampler; deterministic only for DDIM η=0."""
    if not _deterministic(sampler):
        log.warning("interpolating with a stochastic sampler: frames differ by noise too (use sampler=ddim "
                    "sampler.eta=0 for a deterministic decoder)")
    pairs, frames = int(cfg.interpolation.pairs), int(cfg.interpolation.frames)
    if pairs < 1 or frames < 2:
        raise ConfigError("interpolation.pairs must be >= 1 and interpolation.frames >= 2")
    shape = model.data_shape
    z1, z2 = torch.randn((pairs, *shape), generator=g), torch.randn((pairs, *shape), generator=g)
    alphas = torch.linspace(0, 1, frames)
    latents = torch.stack([slerp(z1, z2, float(a)) for a in alphas], dim=1).reshape(pairs * frames, *shape)
    with torch.no_grad():
        x = sample_loop(model.predict_x0_eps, sampler, latents.to(model.device), timesteps, allow_repeats=True,
                        generator=torch.Generator(model.device).manual_seed(int(cfg.seed))).cpu()
    dm.save_samples(x, out_dir, stem="interpolation", title=f"{title} slerp", nrow=frames)
    return {"pairs": pairs, "frames": frames}


def reconstruct(model, timesteps, dm, cfg, out_dir: Path, title: str) -> dict:
    """DDIM-invert held-out data to x_T and decode it back with DDIM η=0 over the same steps."""
    from siddm_lab.diffusion import DDIMSampler

    n = int(cfg.reconstruct.num)
    dm.setup("validate")
    x0 = torch.cat([b for b in dm.val_dataloader()])[:n].to(model.device)
    with torch.no_grad():
        x_T = ddim_invert(model.predict_x0_eps, model.diffusion, x0, timesteps)
        x_rec = sample_loop(model.predict_x0_eps, DDIMSampler(model.diffusion, 0.0), x_T, timesteps,
                            allow_repeats=True)
    err = (x_rec - x0).pow(2).flatten(1).mean(1)
    both = torch.cat([x0.cpu(), x_rec.cpu()])
    dm.save_samples(both, out_dir, stem="reconstruction", title=f"{title} top: data, bottom: reconstruction",
                    nrow=None if both.dim() == 2 else len(x0))
    return {"reconstruction_mse": float(err.mean()), "latent_std": float(x_T.std()), "num_reconstructed": len(x0)}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
@user_errors
def main(cfg: DictConfig):
    return sample(cfg)


if __name__ == "__main__":
    main()
