#!/usr/bin/env bash
# The equal-NFE sweeps of one DDPM checkpoint: DDIM (eta 0), DPM-Solver++ 2M and 3M, UniPC-2 (bh2) and DEIS 2M at
# every NFE of $NFE, and Heun (2 calls per step) at the most steps whose NFE 2S-1 fits each of them (NFE 1, 3, 5,
# ...), on the trailing plan and on EDM's Karras noise levels; then, for reference, DDIM and DPM-Solver++ 2M at
# $REF. Every solver but Heun-Karras on the same plan kind: diffusers' "trailing" spacing (DDIM:
# subsequence=trailing, the same timesteps), which starts at t = T-1 for every step count (so does Karras).
#
#   experiments/fast_samplers/run.sh <ckpt> <out folder> [siddm-sample overrides ...]
#   e.g. experiments/fast_samplers/run.sh experiments/checkpoints/ddpm_mnist_cpu_step12500.ckpt \
#            runs/fast_samplers/mnist data_dir=<folder with MNIST/raw> num_samples=1000 batch_size=500 sampler.clip_x0=1.0
#
# Environment: NFE (default 2,4,6,8,10,15,20), SEEDS (sampling seeds, default 0), REF (default 50; empty: none),
# TAG (the sweeps' folder suffix, default seed<SEEDS>), PYTHON (default .venv/bin/python). More seeds on a few
# NFE: SEEDS=1 NFE=4,8,20 REF= experiments/fast_samplers/run.sh ... A sweep whose folder exists is skipped (a
# rerun finishes what an interrupted one left; delete a partial sweep's folder to redo it).
# Then experiments/fast_samplers/make_table.py <out folder> ... (see README.md).
set -euo pipefail
CKPT=$1; OUT=$2; shift 2
NFE=${NFE:-2,4,6,8,10,15,20}
SEEDS=${SEEDS:-0}
REF=${REF-50}
TAG=${TAG:-seed${SEEDS//,/_}}
PY=${PYTHON:-.venv/bin/python}
sweep() {  # sweep <folder name> <overrides...>
  local dir="$OUT/$1"; shift
  if [ -e "$dir" ]; then echo "skipped (exists): $dir"; return; fi
  "$PY" -m siddm_lab.sample -m ckpt="$CKPT" progress=false hydra.sweep.dir="$dir" "$@"
}
SPACING=sampler.timestep_spacing=trailing
HEUN=$(echo "$NFE" | tr , '\n' | awk '{print int(($1 + 1) / 2)}' | sort -nu | paste -sd,)
sweep ddim_$TAG sampler=ddim subsequence=trailing sampler.eta=0.0 sampler.steps="$NFE" seed="$SEEDS" "$@"
sweep dpm_solver_$TAG sampler=dpm_solver sampler.order=2,3 $SPACING sampler.steps="$NFE" seed="$SEEDS" "$@"
# one sweep per solver: a multirun over sampler=unipc,deis composes its shared config with the default sampler,
# which has no timestep_spacing (Hydra applies the non-sweep overrides to it)
sweep unipc_$TAG sampler=unipc $SPACING sampler.steps="$NFE" seed="$SEEDS" "$@"
sweep deis_$TAG sampler=deis $SPACING sampler.steps="$NFE" seed="$SEEDS" "$@"
sweep heun_$TAG sampler=heun $SPACING sampler.steps="$HEUN" seed="$SEEDS" "$@"
# Heun on EDM's own noise levels (Karras et al.'s rho = 7 spacing of sigma, at the nearest integer timesteps)
sweep heun_karras_$TAG sampler=heun sampler.timestep_spacing=null subsequence=karras sampler.steps="$HEUN" \
  seed="$SEEDS" "$@"
if [ -n "$REF" ]; then
  sweep ddim_ref sampler=ddim subsequence=trailing sampler.eta=0.0 sampler.steps="$REF" seed=0 "$@"
  sweep dpm_solver_ref sampler=dpm_solver sampler.order=2 $SPACING sampler.steps="$REF" seed=0 "$@"
fi
