"""Ensembles of small nets trained in one process: E copies of an MLP as one module.

``stack_members([net_0, ..., net_{E-1}])`` turns E nets of the same architecture (built and
initialised independently, e.g. one per seed) into one module whose ``nn.Linear`` layers hold the
members' weights stacked on a leading dim ([E, out, in]) and apply them with one batched matmul
(``torch.baddbmm``) to inputs [E, B, in]. Everything else in the net must be parameter-free and work
on any leading dims (activations, concatenation on the last dim, the sinusoidal time embedding):
the toy MLPs of ``siddm_lab.nets`` are written that way. Member k of the ensemble computes exactly
what net_k computes on slice k, and since the members share no parameter, their gradients, Adam
updates and weight averages are those of E separate runs.

Why: the toy nets are small, so a single run spends much of its time in per-operation overhead
(framework dispatch, kernel launches on a GPU); E members in one set of operations pay it once.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from siddm_lab.errors import ConfigError


class EnsembleLinear(nn.Module):
    """E linear maps: weight [E, out, in], bias [E, out]; x [E, ..., in] -> [E, ..., out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self.members, self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.members:
            raise ValueError(f"an ensemble of {self.members} members got a batch with leading dim {x.shape[0]}")
        flat = x.reshape(self.members, -1, self.in_features)
        if self.bias is None:
            out = torch.bmm(flat, self.weight.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"members={self.members}, in_features={self.in_features}, out_features={self.out_features}"


def _check_supported(module: nn.Module) -> None:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            continue
        if any(True for _ in sub.parameters(recurse=False)) or any(True for _ in sub.buffers(recurse=False)):
            raise ConfigError(f"ensembles (seeds=[...]) support nets whose parameters are all in nn.Linear layers "
                              f"(the toy MLPs); {type(module).__name__} has {type(sub).__name__} at "
                              f"'{name or '<root>'}'. Train image models one seed per job (seed=0,1,2).")


def stack_members(members: list[nn.Module]) -> nn.Module:
    """One module computing all ``members`` (same architecture) on [E, B, ...] inputs."""
    if not members:
        raise ValueError("stack_members needs at least one net")
    template = members[0]
    _check_supported(template)
    names = [n for n, _ in template.named_parameters()]
    for m in members[1:]:
        if [n for n, _ in m.named_parameters()] != names or any(
                a.shape != b.shape for a, b in zip(template.parameters(), m.parameters())):
            raise ValueError("ensemble members must share one architecture")
    stacked = copy.deepcopy(template)
    for name, sub in list(template.named_modules()):
        if not isinstance(sub, nn.Linear):
            continue
        subs = [m.get_submodule(name) for m in members]
        w = torch.stack([s.weight.detach() for s in subs]).clone()
        b = torch.stack([s.bias.detach() for s in subs]).clone() if sub.bias is not None else None
        new = EnsembleLinear(w, b)
        parent_name, _, attr = name.rpartition(".")
        setattr(stacked.get_submodule(parent_name) if parent_name else stacked, attr, new)
    stacked.ensemble_members = len(members)
    return stacked


def ensemble_size(module: nn.Module) -> int | None:
    """E for a stacked module, None for a plain net."""
    return getattr(module, "ensemble_members", None)


def extract_member(stacked: nn.Module, k: int) -> nn.Module:
    """Member k of a stacked module as a plain net (copies of its weights)."""
    E = ensemble_size(stacked)
    if E is None:
        raise ValueError("not an ensemble")
    if not 0 <= k < E:
        raise ValueError(f"member {k} is out of range: the ensemble has {E} members (0..{E - 1})")
    plain = copy.deepcopy(stacked)
    for name, sub in list(stacked.named_modules()):
        if not isinstance(sub, EnsembleLinear):
            continue
        lin = nn.Linear(sub.in_features, sub.out_features, bias=sub.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(sub.weight[k])
            if sub.bias is not None:
                lin.bias.copy_(sub.bias[k])
        parent_name, _, attr = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, attr, lin)
    del plain.ensemble_members
    return plain


def member_state_dict(state: dict, prefixes: tuple[str, ...], k: int) -> dict:
    """Member k's slice of a checkpoint ``state_dict`` of an ensemble: tensors under ``prefixes``
    (the stacked nets) are indexed [k], everything else is kept."""
    return {key: (v[k] if key.startswith(prefixes) and torch.is_tensor(v) and v.dim() > 0 else v)
            for key, v in state.items()}
