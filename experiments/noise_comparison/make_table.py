"""Gamma vs Gaussian DDPM at equal training budget: one row per forward noise (and θ0), one column per
sampler (its NFE), mean ± std over seeds of each metric.

    python experiments/noise_comparison/make_table.py \
        --train runs/multirun/noise_comparison/<date> runs/multirun/noise_comparison_theta01/<date> \
        --sample runs/multirun/noise_comparison_gamma_ddim/<date> runs/multirun/noise_comparison_ddim/<date> \
        --out experiments/noise_comparison

A training job's result is its final evaluation (metrics.json: the 1000-step ancestral sampler); a sampling
job (siddm-sample -m ckpt=...) is tied to its model through the checkpoint's run folder, whose config.yaml
names the noise. Writes results.csv, table.md (one table per metric), <metric>_vs_nfe.png and
samples_seed0.png (each noise's 1000-step samples).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from siddm_lab.results.jobs import collect, write_results_csv
from siddm_lab.results.plots import plot_vs_nfe
from siddm_lab.results.tables import pivot

METRICS = ("fd_2d", "modes_covered", "hq_ratio", "mmd_poly2")


def noise_label(run_dir: Path) -> str:
    """'gaussian' or 'gamma θ0=<theta0>' from a training run's resolved config."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    noise = cfg.get("noise") or {"name": "gaussian"}
    return noise["name"] if noise["name"] == "gaussian" else f"gamma θ0={noise.get('theta0', 0.001):g}"


def sampler_label(row: dict) -> str:
    extra = ", doubling" if row.get("constraint") == "doubling" else ""
    return f"{row['sampler']}{extra} ({int(float(row['nfe']))} NFE)"


def rows_of(args) -> list[dict]:
    rows: list[dict] = []
    for sweep in args.train:
        for r in collect(sweep)[0]:
            rows.append({**r, "noise": noise_label(Path(sweep) / r["job"]), "sampler_nfe": sampler_label(r)})
    for sweep in args.sample:
        for r in collect(sweep)[0]:
            run_dir = Path(r["ckpt"]).resolve().parent.parent
            rows.append({**r, "noise": noise_label(run_dir), "sampler_nfe": sampler_label(r)})
    return rows


def scatter(rows: list[dict], sweeps: list[str], path: Path) -> None:
    """Seed 0's final samples (the 1000-step ancestral sampler) of each noise, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    firsts = {}
    for sweep in sweeps:
        for r in rows:
            f = Path(sweep) / r["job"] / "samples.npz"
            if str(r.get("seed")) == "0" and f.is_file():
                firsts.setdefault(r["noise"], f)
    fig, axes = plt.subplots(1, len(firsts), figsize=(3.2 * len(firsts), 3.3), dpi=100, squeeze=False)
    for ax, (noise, f) in zip(axes[0], sorted(firsts.items())):
        x = np.load(f)["samples"]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set_title(f"{noise} (1000 NFE)", fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", nargs="+", required=True, help="training sweep folder(s) (experiment=noise_comparison)")
    p.add_argument("--sample", nargs="*", default=[], help="siddm-sample sweep folder(s) over their checkpoints")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = rows_of(args)
    keys = ["noise", "sampler_nfe", "seed", "job", "nfe", *METRICS]
    write_results_csv(out / "results.csv", sorted(rows, key=lambda r: (r["noise"], r["sampler_nfe"], str(r.get("seed")))),
                      keys)
    text = []
    for metric in METRICS:
        text.append(f"### {metric}\n\n" + pivot(rows, "noise", "sampler_nfe", metric))
        plot_vs_nfe([{**r, "series": f"{r['noise']}, {r['sampler']}"} for r in rows], metric, "series",
                    out / f"{metric}_vs_nfe.png", title=f"{metric}: Gamma vs Gaussian noise (mean ± std over seeds)")
    (out / "table.md").write_text("\n".join(text))
    scatter([r for r in rows if r["sampler"] == "ddpm" and int(float(r["nfe"])) == 1000], args.train,
            out / "samples_seed0.png")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
