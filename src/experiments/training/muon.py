"""Muon for the hidden weight matrices, AdamW for everything else: one torch optimizer.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/): nesterov momentum, then
each update matrix replaced by a nearly orthogonal one (5 steps of the reference's quintic
Newton-Schulz iteration in bf16), scaled by sqrt(max(1, rows / cols)), with decoupled weight
decay; conv kernels flattened to (out, in * kh * kw). The step is timm's (`timm.optim.Muon`, with
the reference's coefficients and lr scale, and its AdamW for the `use_muon: False` groups);
what is ours is the split and the per-side settings, which timm's would otherwise choose
differently (see below). With them, timm's step is bit for bit the step of the implementation
this project had before (tests/test_muon.py compares with torch.optim.Muon and torch's AdamW).

The split, over all parameters in registration order, as the reference and the CIFAR-10
speedrun do: 2-D and 4-D parameters go to Muon except the first and the last of them (the stem
conv or input layer, and the classifier); the rest (biases, norms, ndim-3 tokens or position
embeddings, and those two) go to AdamW. timm's own rule routes by shape (both sides >= 4 and an
aspect ratio <= 128), which sends a CIFAR stem (64, 27) and a classifier (100, 512) to Muon.
Each input group becomes up to two groups, marked `use_muon`, each with only its side's
settings: the AdamW side its own lr, betas, eps (1e-10: the reference's auxiliary Adam; timm
shares one eps with the Newton-Schulz clamp) and weight decay. A group's own `weight_decay` is
its decay on both sides (so timm's no-decay groups exempt their biases and norms from AdamW's
decay too), unless it also gives `adamw_weight_decay`. A group's `lr_scale` (timm's per-group
multiplier) scales its Muon lr and its AdamW lr, once, here, unless the group gives its own
`lr` (`adamw_lr`), which is taken as it is (training/param_groups.py gives the final lr): the
schedules then scale every group's lr alike.

Two choices the speed runs make differently (conf/experiment/speedrun.yaml): `edge_matrices=muon`
sends the first and last matrices to Muon too (the CIFAR-100 speedrun orthogonalizes every
conv kernel and its head), and `aux=sgd` steps the other side with SGD (`sgd_*` settings: lr,
momentum, nesterov, weight decay), torch's own SGD step (`torch.optim.sgd.sgd`), instead of
AdamW; the speedrun takes SGD at lr 0.02, momentum 0.9, nesterov, for its BatchNorm weights and
biases.

Not torch.optim.Muon: it takes 2-D parameters only (no conv kernels) and has no AdamW side,
and the trainer, the lr schedules and the checkpoint want one optimizer object.
"""

from __future__ import annotations

import torch
from timm.optim import Muon as TimmMuon
from torch.optim.sgd import sgd

from experiments.values import MOMENTUM, NON_NEGATIVE, POSITIVE, integer, one_of, pair

NS_EPS = 1e-7  # the reference's clamp of the matrix norm before the iteration
MATRIX_NDIMS = (2, 4)  # linear weights, conv kernels
MUON_KEYS = ("lr", "momentum", "nesterov", "ns_steps", "weight_decay")
ADAMW_KEYS = {"adamw_lr": "lr", "adamw_betas": "betas", "adamw_eps": "eps",
              "adamw_weight_decay": "weight_decay"}  # constructor argument -> AdamW group key
SGD_KEYS = {"sgd_lr": "lr", "sgd_momentum": "momentum", "sgd_nesterov": "nesterov",
            "sgd_weight_decay": "weight_decay"}  # constructor argument -> SGD group key


def split_groups(params, settings: dict) -> list[dict]:
    """The constructor's parameters as Muon and AdamW groups (see the module's docstring)."""
    params = list(params)
    groups = ([dict(g) for g in params] if params and isinstance(params[0], dict)
              else [{"params": params}])
    for g in groups:
        g["params"] = [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])
    matrices = [p for g in groups for p in g["params"] if p.ndim in MATRIX_NDIMS]
    edges = {id(matrices[0]), id(matrices[-1])} if matrices and settings["edge_matrices"] == "aux" else set()
    sgd = settings["aux"] == "sgd"
    out = []
    for g in groups:
        own = {k: g.pop(k) for k in settings if k in g}  # the group's own settings, as given
        s, scale = {**settings, **own}, g.get("lr_scale", 1.0)
        rest = {k: v for k, v in g.items() if k != "params"}  # lr_scale, SAM's rho, ...
        hidden = [p.ndim in MATRIX_NDIMS and id(p) not in edges for p in g["params"]]
        muon = [p for p, h in zip(g["params"], hidden) if h]
        adamw = [p for p, h in zip(g["params"], hidden) if not h]
        if muon:
            out.append({**rest, "params": muon, "use_muon": True,
                        **{k: s[k] for k in MUON_KEYS}, "lr": own.get("lr", s["lr"] * scale)})
        if adamw and sgd:
            out.append({**rest, "params": adamw, "use_muon": False, "sgd": True,
                        **{key: s[arg] for arg, key in SGD_KEYS.items()},
                        "lr": own.get("sgd_lr", s["sgd_lr"] * scale),
                        "weight_decay": own.get("sgd_weight_decay",
                                                own.get("weight_decay", s["sgd_weight_decay"]))})
        elif adamw:
            # (timm steps its AdamW side with NAdamW when the group says nesterov: it does not;
            # and at lr * fallback_lr_scale: the group's lr is already AdamW's)
            out.append({**rest, "params": adamw, "use_muon": False, "nesterov": False,
                        "fallback_lr_scale": 1.0,
                        **{key: s[arg] for arg, key in ADAMW_KEYS.items()},
                        "lr": own.get("adamw_lr", s["adamw_lr"] * scale),
                        # a group's own weight decay holds on both sides (timm's no-decay groups
                        # of biases and norms: 0), unless it gives the AdamW side its own
                        "weight_decay": own.get("adamw_weight_decay",
                                                own.get("weight_decay", s["adamw_weight_decay"]))})
    return out


# the constructor's arguments: what each must be (config/checks.py checks the same keys of the
# config before the job builds anything)
MUON_RULES = {"ns_steps": integer(1, "a positive integer (Newton-Schulz steps)"),
              "adamw_lr": POSITIVE, "adamw_betas": pair(MOMENTUM, "two numbers in [0, 1)", False),
              "adamw_eps": POSITIVE, "adamw_weight_decay": NON_NEGATIVE,
              "aux": one_of("adamw", "sgd"), "edge_matrices": one_of("aux", "muon"),
              "sgd_lr": POSITIVE, "sgd_momentum": MOMENTUM, "sgd_weight_decay": NON_NEGATIVE}
RULES = {"lr": POSITIVE, "momentum": MOMENTUM, "weight_decay": NON_NEGATIVE, **MUON_RULES}


class Muon(TimmMuon):
    """Muon + AdamW in one optimizer: timm's step on this module's split. Every setting is given
    (conf/optim/muon.yaml holds them, with their sources): no second set of defaults here."""

    def __init__(self, params, *, lr: float, momentum: float, nesterov: bool, ns_steps: int,
                 weight_decay: float, adamw_lr: float, adamw_betas: tuple[float, float],
                 adamw_eps: float, adamw_weight_decay: float, aux: str, edge_matrices: str,
                 sgd_lr: float, sgd_momentum: float, sgd_nesterov: bool, sgd_weight_decay: float):
        adamw_betas = tuple(float(b) for b in adamw_betas)
        settings = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay, adamw_lr=adamw_lr, adamw_betas=adamw_betas,
                        adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay, aux=aux,
                        edge_matrices=edge_matrices, sgd_lr=sgd_lr, sgd_momentum=sgd_momentum,
                        sgd_nesterov=sgd_nesterov, sgd_weight_decay=sgd_weight_decay)
        for key, rule in RULES.items():
            rule.check(f"Muon's {key}", settings[key])
        super().__init__(split_groups(params, settings), lr=lr, momentum=momentum,
                         nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                         ns_coefficients="original", adjust_lr_fn="original", eps=NS_EPS,
                         betas=adamw_betas)
        self.settings = settings

    @torch.no_grad()
    def step(self, closure=None):
        """timm's step for the Muon and AdamW groups; torch's SGD step for the `sgd` groups
        (aux=sgd), which timm's step is not shown."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("sgd"):
                self.sgd_step(group)
        everything = self.param_groups
        self.param_groups = [g for g in everything if not g.get("sgd")]
        try:
            super().step()
        finally:
            self.param_groups = everything
        return loss

    def sgd_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
            momentum=group["momentum"], lr=group["lr"], dampening=0.0,
            nesterov=group["nesterov"], maximize=False)
        for p, buffer in zip(params, buffers):  # (sgd creates the buffers at the first step)
            self.state[p]["momentum_buffer"] = buffer

    def add_param_group(self, param_group: dict) -> None:
        if "use_muon" not in param_group:
            raise ValueError("Muon splits its parameters in the constructor: a group added "
                             "later must carry use_muon and that side's settings")
        super().add_param_group(param_group)
