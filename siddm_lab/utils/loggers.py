"""The loggers and callbacks of a run, built from its config, and W&B runs: names and tags from the
job's overrides, offline logging without credentials, one run for a job that does not train."""

from __future__ import annotations

import logging
import netrc
import os
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("siddm_lab")


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


# Override keys that say where things are, not what is run: left out of W&B names and tags.
_LOCATION_KEYS = ("paths.", "hydra.", "ckpt", "data_dir", "progress", "device", "trainer.enable_progress_bar",
                  "experiment")


def run_identity(cfg: DictConfig) -> tuple[str, list[str]]:
    """(name, tags) of a run for W&B: the job's overrides (``model=siddm,diffusion.steps=4``) and one
    tag per override, plus the experiment; ``task_name`` when nothing was overridden."""
    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        pass
    kept = [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith(_LOCATION_KEYS)]
    tags = [o.lstrip("+~")[:64] for o in kept]  # W&B tags are at most 64 characters
    if cfg.get("task_name"):
        tags.insert(0, str(cfg.task_name))
    return (",".join(o.lstrip("+~") for o in kept) or str(cfg.get("task_name") or "run"))[:128], tags


def wandb_settings(out_dir=None) -> None:
    """Offline W&B (WANDB_MODE=offline) when there are no credentials, instead of a login prompt."""
    if not os.environ.get("WANDB_MODE") and not _has_wandb_credentials():
        log.warning("no W&B credentials found: logging offline (WANDB_MODE=offline)")
        os.environ["WANDB_MODE"] = "offline"


def _wandb_init_timeout() -> float:
    """W&B's init timeout (its setting ``init_timeout``, from WANDB_INIT_TIMEOUT; 90 s by default)."""
    import wandb

    try:
        return float(wandb.setup().settings.init_timeout)
    except Exception:  # noqa: BLE001 - only used in a message
        return float("nan")


def start_wandb(init):
    """``init(mode)`` starts a W&B run (``mode=None``: as configured) and returns ``(value, run)``. A run
    that cannot start online, e.g. on a compute node without network, where W&B waits for its init timeout
    and then raises, is started again offline, with a warning that says so; an offline run's folder is
    logged with the command that uploads it."""
    import wandb

    try:
        value, run = init(None)
    except wandb.Error as e:
        if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        timed_out = any(w in first.lower() for w in ("timed out", "deadline exceeded", "timeout"))
        why = (f"W&B did not answer within {_wandb_init_timeout():g} s (its init timeout; WANDB_INIT_TIMEOUT sets "
               f"it): {first}" if timed_out else f"W&B could not start the run online: {first}")
        log.warning("%s. Logging offline instead (no network on this machine?)", why)
        value, run = init("offline")
    if getattr(run, "offline", None) is True:  # (ranks other than 0 hold a stand-in that answers anything)
        sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
        if sync_dir:
            log.info("W&B logs this run offline to %s: upload it with `wandb sync %s`", sync_dir, sync_dir)
    return value, run


def wandb_log_job(*, job_type: str, group: str, name: str, tags: list[str], config: dict, metrics: dict,
                  images: list[Path], out_dir, table: list[dict] | None = None) -> None:
    """One W&B run for a job that does not train (siddm-sample, siddm-collect): config, numeric
    metrics, images (sample grids, scatter and metric-vs-NFE plots) and optionally a table; then
    ``wandb.finish()``. Project/entity from WANDB_PROJECT / WANDB_ENTITY (default project siddm_lab)."""
    import wandb

    wandb_settings()

    def init(mode):
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "siddm_lab"), entity=os.environ.get("WANDB_ENTITY"),
                         group=group, job_type=job_type, name=name, tags=tags, config=config, dir=str(out_dir),
                         **({"mode": mode} if mode else {}))
        return run, run

    run, _ = start_wandb(init)
    try:
        data = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        data.update({f"{job_type}/{Path(p).stem}": wandb.Image(str(p)) for p in images if Path(p).is_file()})
        if table:
            cols = list(dict.fromkeys(k for r in table for k in r))
            data[f"{job_type}/results"] = wandb.Table(columns=cols, data=[[str(r.get(c, "")) for c in cols]
                                                                          for r in table])
        run.log(data)
    finally:
        wandb.finish()


def adopt_csv_header(loggers) -> None:
    """Let CSV loggers keep what their metrics.csv already holds: a resumed run, or the main process
    after spawned DDP ranks, writes into a file another process started. Lightning's CSV writer
    deletes an existing metrics.csv when it opens (it warns "Previous log files ... will be deleted"),
    and later rewrites the file with only the columns its own process logged; so the rows are read
    first, written back after the writer opened, and their columns adopted."""
    import csv

    for logger in loggers or []:
        if type(logger).__name__ != "CSVLogger":
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows, header = [], []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, header = list(reader), list(reader.fieldnames or [])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted.*")
            writer = logger.experiment  # opens the writer: this is where Lightning deletes the file
        if not isinstance(getattr(writer, "metrics_file_path", None), str):
            continue  # ranks other than 0 get Lightning's no-op experiment
        if header:
            with open(writer.metrics_file_path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=header)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def build_loggers(cfg: DictConfig):
    from hydra.utils import instantiate

    lcfg = cfg.get("logger")
    if not lcfg:
        return False
    loggers = []
    for sub in lcfg.values():
        if sub is None or "_target_" not in sub:
            continue
        if "Wandb" in sub["_target_"]:
            wandb_settings()
            name, tags = run_identity(cfg)
            kwargs = {"name": sub.get("name") or name, "tags": list(sub.get("tags") or []) + tags}

            def init(mode, sub=sub, kwargs=kwargs):
                logger = instantiate(sub, **kwargs, **({"mode": mode} if mode else {}))
                return logger, logger.experiment  # starts the run (rank 0; other ranks get a stand-in)

            loggers.append(start_wandb(init)[0])
        else:
            loggers.append(instantiate(sub))
    adopt_csv_header(loggers)  # before anything opens the CSV writer
    for logger in loggers:  # the resolved config: W&B run config, CSV hparams.yaml
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers or False


def build_callbacks(cfg: DictConfig, has_logger: bool = True):
    """Instantiate ``cfg.callbacks``; logger-only callbacks are dropped when there is no logger; the periodic
    evaluation comes after the weight averaging."""
    from hydra.utils import instantiate

    ccfg = cfg.get("callbacks") or {}
    callbacks = []
    for sub in ccfg.values():
        if sub is None or "_target_" not in sub:
            continue
        if not has_logger and sub["_target_"].endswith("LearningRateMonitor"):
            continue
        callbacks.append(instantiate(sub))
    # the periodic evaluation scores the averaged weights: it runs after every weight-averaging callback (EMA)
    from lightning.pytorch.callbacks import WeightAveraging

    from siddm_lab.callbacks import PeriodicEvaluation

    last = [c for c in callbacks if isinstance(c, PeriodicEvaluation)]
    averaging = [c for c in callbacks if isinstance(c, WeightAveraging)]
    rest = [c for c in callbacks if c not in last and c not in averaging]
    return rest + averaging + last
