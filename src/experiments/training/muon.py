"""Muon for the hidden weight matrices, AdamW for everything else: one torch optimizer.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/): nesterov momentum, then
each update matrix replaced by a nearly orthogonal one (5 steps of a quintic Newton-Schulz
iteration in bf16), scaled by sqrt(max(1, rows / cols)), with decoupled weight decay; conv
kernels flattened to (out, in * kh * kw). It follows the reference, github.com/KellerJordan/Muon
muon.py (`zeropower_via_newtonschulz5`, `muon_update`, `SingleDeviceMuonWithAuxAdam`), except:
the iteration runs on fused addmm, as in torch.optim.Muon; a conv kernel's scale reads the
flattened shape (the reference reads kh / kw there); `.grad` is not overwritten.

Not torch.optim.Muon: it takes 2-D parameters only (no conv kernels) and has no AdamW side,
and the trainer, the lr schedules and the checkpoint want one optimizer object. For a 2-D
parameter the two agree bit for bit (tests/test_muon.py).

The split, over all parameters in registration order: 2-D and 4-D parameters go to Muon except
the first and the last of them (the stem conv or input layer, and the classifier); the rest
(biases, norms, ndim-3 tokens or position embeddings, and those two) go to AdamW, torch's
decoupled AdamW math. Each input group becomes up to two groups, marked `use_muon`, so a
state_dict round trip is exact. A group's own `weight_decay` is its decay on both sides (so
timm's no-decay groups exempt their biases and norms from AdamW's decay too), unless it also
gives `adamw_weight_decay`. A group's `lr_scale` (timm's per-group multiplier) scales its
Muon lr and its AdamW lr, once, here, unless the group gives its own `lr` (`adamw_lr`), which is
taken as it is (training/param_groups.py gives the final lr): the schedules then scale every
group's lr alike.
"""

from __future__ import annotations

import torch

from experiments.values import MOMENTUM, NON_NEGATIVE, POSITIVE, integer, pair

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the reference's quintic: steepest slope at zero
MATRIX_NDIMS = (2, 4)  # linear weights, conv kernels
MUON_KEYS = ("lr", "momentum", "nesterov", "ns_steps", "weight_decay")
ADAMW_KEYS = {"adamw_lr": "lr", "adamw_betas": "betas", "adamw_eps": "eps",
              "adamw_weight_decay": "weight_decay"}  # constructor argument -> AdamW group key


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int) -> torch.Tensor:
    """About U V^T for a matrix G = U S V^T, in bf16: the quintic overshoots on purpose, so the
    singular values land in roughly [0.7, 1.2] instead of at 1, which trains as well (the
    reference). Each step is the reference's a X + (b A + c A^2) X with A = X X^T, evaluated
    with two fused addmm as torch.optim.Muon does: fewer bf16 roundings (1.6% from the fp64
    result on random matrices, against 3.5% for the reference's unfused form)."""
    a, b, c = NS_COEFFICIENTS
    X = G.bfloat16()
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    X = X / X.norm().clamp(min=1e-7)  # spectral norm <= 1
    for _ in range(steps):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.T if tall else X


def muon_update(grad: torch.Tensor, buf: torch.Tensor, momentum: float, ns_steps: int,
                nesterov: bool) -> tuple[torch.Tensor, float]:
    """One parameter's orthogonalized step as a 2-D matrix (the caller reshapes it), and its
    scale sqrt(max(1, rows / cols))."""
    buf.lerp_(grad, 1 - momentum)
    update = grad.lerp(buf, momentum) if nesterov else buf
    matrix = update.reshape(len(update), -1)  # conv (out, in, kh, kw) -> (out, in * kh * kw)
    return zeropower_via_newtonschulz5(matrix, ns_steps), max(1, matrix.size(0) / matrix.size(1)) ** 0.5


def split_groups(params, settings: dict) -> list[dict]:
    """The constructor's parameters as Muon and AdamW groups (see the module's docstring)."""
    params = list(params)
    groups = ([dict(g) for g in params] if params and isinstance(params[0], dict)
              else [{"params": params}])
    for g in groups:
        g["params"] = [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])
    matrices = [p for g in groups for p in g["params"] if p.ndim in MATRIX_NDIMS]
    edges = {id(matrices[0]), id(matrices[-1])} if matrices else set()
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
        if adamw:
            out.append({**rest, "params": adamw, "use_muon": False,
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
              "adamw_eps": POSITIVE, "adamw_weight_decay": NON_NEGATIVE}
RULES = {"lr": POSITIVE, "momentum": MOMENTUM, "weight_decay": NON_NEGATIVE, **MUON_RULES}


class Muon(torch.optim.Optimizer):
    """Muon + AdamW in one optimizer. Every setting is given (conf/optim/muon.yaml holds them,
    with their sources): no second set of defaults here."""

    def __init__(self, params, *, lr: float, momentum: float, nesterov: bool, ns_steps: int,
                 weight_decay: float, adamw_lr: float, adamw_betas: tuple[float, float],
                 adamw_eps: float, adamw_weight_decay: float):
        adamw_betas = tuple(float(b) for b in adamw_betas)
        settings = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        weight_decay=weight_decay, adamw_lr=adamw_lr, adamw_betas=adamw_betas,
                        adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay)
        for key, rule in RULES.items():
            rule.check(f"Muon's {key}", settings[key])
        # no defaults to fill in: every group is complete, with only its own side's settings
        super().__init__(split_groups(params, settings), {})
        self.settings = settings

    def add_param_group(self, param_group: dict) -> None:
        if "use_muon" not in param_group:
            raise ValueError("Muon splits its parameters in the constructor: a group added "
                             "later must carry use_muon and that side's settings")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            update = self._muon if group["use_muon"] else self._adamw
            for p in group["params"]:
                if p.grad is not None:
                    update(p, p.grad, self.state[p], group)
        return loss

    @staticmethod
    def _muon(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        update, scale = muon_update(grad, state["momentum_buffer"], group["momentum"],
                                    group["ns_steps"], group["nesterov"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.reshape(p.shape), alpha=-group["lr"] * scale)

    @staticmethod
    def _adamw(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        """torch.optim.AdamW's single-tensor step, operation for operation."""
        if not state:
            state["step"] = torch.tensor(0.0)  # on the CPU, as torch keeps it: no sync to read
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        (beta1, beta2), lr, step = group["betas"], group["lr"], state["step"].item()
        p.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** step) ** 0.5).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-(lr / (1 - beta1 ** step)))
