"""Sampling a trained checkpoint, the library side of ``siddm-sample``: load the checkpoint, check the
sampler against it, draw samples (and the dataset's metrics) or run one of the other modes, and write the
run's ``metrics.json`` and ``config.yaml``.

Modes: ``sample``; ``interpolate`` (slerp between latents, decoded deterministically: a strip per pair);
``reconstruct`` (DDIM-invert real data and decode it back; reports the error); ``invert`` (model inversion:
Adam on x_T so that its DDIM decoding matches held-out images, by backprop through the chain or through the
DEQ fixed point; reports the lowest loss per image, time and NFE).
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from siddm_lab.config import keys_as_set, validate
from siddm_lab.diffusion import DDIMSampler, Inversion, ddim_invert, slerp
from siddm_lab.errors import ConfigError
from siddm_lab.evaluation import draw, evaluate
from siddm_lab.models.distill import Distillation
from siddm_lab.models.loading import load_model
from siddm_lab.utils.loggers import log, run_identity, wandb_log_job
from siddm_lab.utils.measure import Measure
from siddm_lab.utils.run_files import accept_output_dir, write_json, write_resolved_config
from siddm_lab.utils.threads import apply_threads

MODES = ("sample", "interpolate", "reconstruct", "invert")


DEVICES = "auto, cpu, cuda or cuda:<index>"


def parse_device(name) -> torch.device:
    """The device of ``device=NAME`` (``auto``: CUDA if available); refused unless this machine has it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(name))
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is invalid: expected {DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use device=cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"allowed: {DEVICES} (index < {torch.cuda.device_count()})")
    return dev


# Files of an earlier result in a siddm-sample folder (or of a training run, whose folder is no place to sample)
RESULT_FILES = ("metrics.json", "samples.npz", "config.yaml")


def refuse_earlier_results(out_dir: Path) -> None:
    """A sample run never writes over an earlier result: refused before anything is written."""
    found = [out_dir / name for name in RESULT_FILES if (out_dir / name).is_file()]
    found += sorted((out_dir / "checkpoints").glob("*.ckpt"))[:2]
    if found:
        names = ", ".join(str(p.relative_to(out_dir)) for p in found)
        raise ConfigError(f"{out_dir} already holds an earlier result ({names}) and this run would overwrite it: "
                          f"sample into another folder (hydra.run.dir=<new folder>), or move that result away first")


def build_datamodule(run_cfg: DictConfig, data_dir):
    """The datamodule of a checkpoint's run config, reading its files from ``data_dir`` when given."""
    dcfg = run_cfg.dataset
    if data_dir is not None and "reader" in dcfg and "root" in dcfg.reader:
        with open_dict(dcfg):
            dcfg.reader.root = str(data_dir)
    return instantiate(dcfg)


def sampler_for_checkpoint(model, sampler_cfg: DictConfig, mode: str):
    """The sampler of ``sampler_cfg`` bound to the loaded model and checked against it (``check_sampler``, the
    one refusal: e.g. a continuous-time diffusion GAN samples only with its generator chain); modes other than
    ``sample`` decode deterministically, which they add to what the sampler needs. A distilled student sampled
    with another plan than its own (``sampler=student``) is warned about."""
    extra = ("deterministic",) if mode != "sample" else ()
    sampler = model.get_sampler(instantiate(sampler_cfg), extra, what=f"mode={mode}" if extra else None,
                                hint="sample it with mode=sample")
    own = model.student_plan() if isinstance(model, Distillation) else None
    if own is not None and list(getattr(sampler, "timesteps", [])) != list(own):
        log.warning(f"this checkpoint is a distilled student trained for its {len(own)}-step plan {own}; it is "
                    f"sampled with {sampler.name} (NFE {sampler.nfe}) as asked: sampler=student samples its "
                    f"own plan")
    return sampler


def check_settings(cfg: DictConfig) -> torch.device:
    """The checks of a ``sample`` config that need no checkpoint (``validate``, the mode, the sample count for
    the metrics, the device); returns the device."""
    validate(cfg)
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is unknown; allowed: {', '.join(MODES)}")
    if cfg.mode == "sample" and cfg.metrics and int(cfg.num_samples) < 2:
        raise ConfigError(f"num_samples={cfg.num_samples} is too few for the metrics (they fit a mean and a "
                          f"covariance): give num_samples >= 2, or metrics=false to only draw samples")
    return parse_device(cfg.device)


def configured_sampler(cfg: DictConfig, model):
    """``cfg.sampler`` bound to the loaded ``model`` and checked against it (``sampler_for_checkpoint``): a
    setting the sampler refuses names the key the user set."""
    with keys_as_set(cfg):
        return sampler_for_checkpoint(model, cfg.sampler, cfg.mode)


def preflight(cfg: DictConfig, loaded: dict | None = None) -> None:
    """What ``siddm-sample`` checks of ``cfg`` before it writes a file (``check_settings``, the checkpoint, the
    sampler against its model), without the output folder: run for every job of a sweep before the first one
    starts (``siddm_lab.utils.hydra_hooks.SweepCheck``). ``loaded``: the models already loaded (on the CPU), by
    checkpoint, weights and member."""
    check_settings(cfg)
    key = (str(cfg.ckpt), cfg.weights, cfg.get("member"))
    if loaded is None or key not in loaded:
        model, _ = load_model(key[0], key[1], "cpu", key[2])
        if loaded is not None:
            loaded[key] = model
    configured_sampler(cfg, loaded[key] if loaded is not None else model)


def sample_checkpoint(cfg: DictConfig) -> dict:
    """Run a composed ``sample`` config: sample ``cfg.ckpt`` in ``cfg.mode`` into ``cfg.paths.output_dir``
    and return what its ``metrics.json`` records. The checkpoint is loaded, the sampler checked against it
    and the datamodule built before the folder is accepted: a refused run writes nothing there."""
    device = check_settings(cfg)
    apply_threads(cfg.get("threads", "auto"))
    out_dir = Path(cfg.paths.output_dir)
    refuse_earlier_results(out_dir)
    model, run_cfg = load_model(cfg.ckpt, cfg.weights, device, cfg.get("member"))
    sampler = configured_sampler(cfg, model)
    dm = build_datamodule(run_cfg, cfg.data_dir)
    accept_output_dir(out_dir)
    info = {"ckpt": str(cfg.ckpt), "model": getattr(model, "label", type(model).__name__),
            "T": model.diffusion.num_timesteps, **sampler.settings(), "seed": int(cfg.seed), "weights": cfg.weights,
            "member": cfg.get("member"), "train_step": model.global_step_at_save}
    title = f"{info['model']} {info['sampler']} NFE={sampler.nfe}" + (f" eta={info['eta']}" if "eta" in info else "")
    if cfg.mode == "sample":
        if cfg.metrics:
            result = evaluate(model, sampler, dm, int(cfg.num_samples), int(cfg.seed), out_dir,
                              batch_size=int(cfg.batch_size), title=title, strict=True, progress=bool(cfg.progress))[0]
            info.update({k: v for k, v in result.items() if k not in ("seed", "dir")})
        else:
            measured: dict = {}
            samples, _ = draw(model, sampler, int(cfg.num_samples), int(cfg.seed), int(cfg.batch_size),
                              bool(cfg.progress), measured)
            info.update(measured)
            info["num_samples"] = len(samples)
            dm.save_samples(samples, out_dir, stem="samples", title=title)
    elif cfg.mode == "interpolate":
        info.update(interpolate(model, sampler, dm, cfg.interpolation.pairs, cfg.interpolation.frames, cfg.seed,
                                out_dir, title))
    elif cfg.mode == "reconstruct":
        info.update(reconstruct(model, sampler, dm, cfg.reconstruct.num, out_dir, title))
    else:
        info.update(invert(model, sampler, dm, cfg.invert, cfg.seed, out_dir, title))
    info.update(sampler.settings())  # after sampling: a fixed-point sampler's iterations and NFE
    write_resolved_config(cfg, out_dir)  # with the result: a failed run leaves no config.yaml beside nothing
    write_json(out_dir / "metrics.json", info)
    if cfg.get("wandb"):
        name, tags = run_identity(cfg)
        wandb_log_job(job_type="sample", group=str(cfg.task_name), name=name, tags=tags,
                      config={**OmegaConf.to_container(cfg, resolve=True), "checkpoint": info}, metrics=info,
                      images=sorted(out_dir.glob("*.png")), out_dir=out_dir)
    shown = {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and k not in ("seed", "T", "train_step")}
    log.info("results: %s", ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    log.info("outputs in %s", out_dir)
    return info


def interpolate(model, sampler, dm, pairs, frames, seed, out_dir: Path, title: str) -> dict:
    """Strips of slerp(z1, z2, α) decoded with the sampler (``pairs`` strips of ``frames`` frames, latents
    drawn with ``seed``) saved as ``interpolation.*``; deterministic only for DDIM η=0."""
    if sampler.stochastic:
        log.warning("interpolating with a stochastic sampler: frames differ by noise too (use sampler=ddim "
                    "sampler.eta=0 for a deterministic decoder)")
    pairs, frames = int(pairs), int(frames)
    if pairs < 1 or frames < 2:
        raise ConfigError("interpolation.pairs must be >= 1 and interpolation.frames >= 2")
    g = torch.Generator().manual_seed(int(seed))
    shape = model.data_shape
    z1, z2 = torch.randn((pairs, *shape), generator=g), torch.randn((pairs, *shape), generator=g)
    alphas = torch.linspace(0, 1, frames)
    latents = torch.stack([slerp(z1, z2, float(a)) for a in alphas], dim=1).reshape(pairs * frames, *shape)
    with torch.no_grad():
        x = model.draw(sampler, latents.to(model.device), int(seed)).cpu()
    dm.save_samples(x, out_dir, stem="interpolation", title=f"{title} slerp", nrow=frames)
    return {"pairs": pairs, "frames": frames}


def reconstruct(model, sampler, dm, num, out_dir: Path, title: str) -> dict:
    """DDIM-invert ``num`` held-out data to x_T over the sampler's timesteps and decode it back with DDIM η=0;
    saved as ``reconstruction.*`` (data above, reconstructions below)."""
    if sampler.name != "ddim" or sampler.stochastic:
        raise ConfigError("mode=reconstruct inverts and decodes with deterministic DDIM: use sampler=ddim "
                          "sampler.eta=0")
    n = int(num)
    dm.setup("validate")
    x0 = torch.cat([b for b in dm.val_dataloader()])[:n].to(model.device)
    with torch.no_grad():
        x_T = ddim_invert(sampler.clipped(model.predict_x0_eps), model.diffusion, x0, sampler.timesteps)
        x_rec = sampler.sample(model.predict_x0_eps, x_T)
    err = (x_rec - x0).pow(2).flatten(1).mean(1)
    both = torch.cat([x0.cpu(), x_rec.cpu()])
    dm.save_samples(both, out_dir, stem="reconstruction", title=f"{title} top: data, bottom: reconstruction",
                    nrow=None if both.dim() == 2 else len(x0))
    return {"reconstruction_mse": float(err.mean()), "latent_std": float(x_T.std()), "num_reconstructed": len(x0)}


def invert(model, sampler, dm, settings, seed, out_dir: Path, title: str) -> dict:
    """Model inversion of ``settings.num`` held-out images (``siddm_lab.diffusion.inversion``; ``settings``: the
    keys of the ``invert`` config): x_T from noise (drawn with ``seed``) or from DDIM inversion of the image,
    then ``settings.iters`` Adam steps; the best x_T of each image is decoded again with the sequential chain
    for the reported ``final_mse``."""
    if not isinstance(sampler, DDIMSampler) or sampler.stochastic:
        raise ConfigError("mode=invert decodes with deterministic DDIM: use sampler=deq (any invert.method) or "
                          "sampler=ddim sampler.eta=0 (invert.method=backprop)")
    c = settings
    if c.init not in ("noise", "ddim_invert"):
        raise ConfigError(f"invert.init={c.init!r} is unknown; allowed: noise, ddim_invert")
    n = int(c.num)
    if n < 1:
        raise ConfigError(f"invert.num={n} is invalid: expected an integer >= 1")
    inv = Inversion(c.method, int(c.iters), c.lr, int(c.pg_steps), c.pg_damping,
                    None if c.adjoint_iters is None else int(c.adjoint_iters), bool(c.warm_start))
    dm.setup("validate")
    target = torch.cat([b for b in dm.val_dataloader()])[:n].to(model.device)
    predict = model.predict_x0_eps
    if c.init == "noise":
        x_T = torch.randn(target.shape, generator=torch.Generator().manual_seed(int(seed))).to(model.device)
    else:
        x_T = ddim_invert(sampler.clipped(predict), model.diffusion, target, sampler.timesteps)
    model.requires_grad_(False)  # gradients for x_T only
    bs = int(c.batch_size or n)
    results, fp_iters = [], []
    every = max(1, inv.iters // 10)

    def report(step: int, loss: float, best_so_far: float) -> None:  # about ten log lines per batch
        if step % every == 0 or step == inv.iters:
            log.info(f"invert images {i + 1}-{min(i + bs, n)} of {n}: Adam step {step}/{inv.iters}, loss {loss:.4g}, "
                     f"lowest per image so far {best_so_far:.4g}")

    with Measure(model.device) as m:
        for i in range(0, n, bs):
            results.append(inv.run(predict, sampler, target[i:i + bs], x_T[i:i + bs], on_step=report))
            fp_iters += results[-1]["fixed_point_iterations"]
    best = torch.cat([r["x_T"] for r in results])
    min_loss = torch.cat([r["min_loss"] for r in results]).cpu()
    decoded = inv.decode(predict, sampler, best)
    final = (decoded - target).pow(2).flatten(1).mean(1).cpu()
    if target.dim() == 2 and target.shape[1] == 2:  # points: each target joined to its decoding
        from siddm_lab.utils.plotting import pairs

        to_data = getattr(dm, "to_data_space", lambda x: x)
        ref = getattr(dm, "reference", None)
        pairs(to_data(target.cpu().float()).numpy(), to_data(decoded.cpu().float()).numpy(), out_dir / "inversion.png",
              reference=None if ref is None else ref.numpy(), title=f"{title} {c.method}: decoded best x_T")
    else:
        both = torch.cat([target.cpu(), decoded.cpu()])
        dm.save_samples(both, out_dir, stem="inversion", title=f"{title} {c.method}: top data, bottom decoded best x_T",
                        nrow=n)
    curve = [sum(v) / len(v) for v in zip(*[r["curve"] for r in results])]
    std = float(min_loss.std()) if n > 1 else 0.0
    return {**{f"invert_{k}": v for k, v in inv.settings().items()}, "invert_init": c.init, "num_inverted": n,
            "min_loss": float(min_loss.mean()), "min_loss_std": std,
            "min_sse": float(min_loss.mean()) * target[0].numel(),  # the public code's loss: summed over pixels
            "final_mse": float(final.mean()),
            "final_mse_std": float(final.std()) if n > 1 else 0.0, "invert_seconds": m.seconds,
            "seconds_per_image": m.seconds / n, "invert_nfe_per_image": sum(r["nfe"] for r in results) / len(results),
            "fixed_point_iterations_mean": sum(fp_iters) / len(fp_iters) if fp_iters else None,
            "peak_memory_mb": m.peak_memory_mb, "loss_curve": curve}
