"""optim=muon (training/muon.py): which parameters Muon takes, its update against
torch.optim.Muon, conv kernels, per-group lr scales, the state_dict, loss scaling and SAM.
(Every model steps with it in test_grid.py; a killed run resumes bit-exact in test_resume.py.)"""

import io

import pytest
import torch
import torch.nn as nn

from experiments.config.checks import check_config
from experiments.job import build_optimizer, build_trainer
from experiments.models import MLP, timm_resnet18
from experiments.training.batch_schedule import BatchSchedule
from experiments.training.muon import Muon
from experiments.training.sam import SAM

# the reference's defaults (github.com/KellerJordan/Muon, muon.py: Muon and its auxiliary Adam):
# what these tests compare with torch.optim.Muon and AdamW under
REFERENCE = dict(lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0,
                 adamw_lr=3e-4, adamw_betas=(0.9, 0.95), adamw_eps=1e-10, adamw_weight_decay=0.0,
                 aux="adamw", edge_matrices="aux", sgd_lr=0.02, sgd_momentum=0.9, sgd_nesterov=True,
                 sgd_weight_decay=0.0)


def make_muon(params, **settings):
    return Muon(params, **{**REFERENCE, **settings})

BAND = (0.65, 1.2)  # where the quintic leaves the singular values (the reference: about 0.7-1.2)


def sides(optimizer, model):
    """The names of the parameters on the Muon side and on the AdamW side."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {True: set(), False: set()}
    for group in optimizer.param_groups:
        out[group["use_muon"]] |= {names[id(p)] for p in group["params"]}
    return out[True], out[False]


def test_resnet18_split_hidden_convs_to_muon_stem_and_classifier_to_adamw():
    model = timm_resnet18(num_classes=10, in_chans=3, width=8, cifar_stem=True)
    muon, adamw = sides(make_muon(model.parameters()), model)
    assert muon == {*(f"layer{s}.{b}.conv{c}.weight" for s in (1, 2, 3, 4) for b in (0, 1) for c in (1, 2)),
                    *(f"layer{s}.0.downsample.0.weight" for s in (2, 3, 4))}
    assert adamw == {"conv1.weight", "bn1.weight", "bn1.bias", "fc.weight", "fc.bias",
                     *(f"layer{s}.{b}.bn{c}.{w}" for s in (1, 2, 3, 4) for b in (0, 1) for c in (1, 2)
                       for w in ("weight", "bias")),
                     *(f"layer{s}.0.downsample.1.{w}" for s in (2, 3, 4) for w in ("weight", "bias"))}
    assert len(muon) + len(adamw) == len(list(model.parameters()))


def test_mlp_split_only_the_hidden_matrix_to_muon():
    model = MLP(num_classes=10, in_chans=3, image_size=32, width=8, depth=2)
    muon, adamw = sides(make_muon(model.parameters()), model)
    assert muon == {"net.5.weight"}  # net.1: the input layer, net.9: the classifier
    assert adamw == {"net.1.weight", "net.1.bias", "net.2.weight", "net.2.bias", "net.5.bias",
                     "net.6.weight", "net.6.bias", "net.9.weight", "net.9.bias"}


def test_tokens_and_vectors_go_to_adamw():
    tokens, embed, hidden, bias, head = (nn.Parameter(torch.zeros(s)) for s in
                                         [(1, 4, 8), (8, 3, 4, 4), (8, 8), (8,), (10, 8)])
    opt = make_muon([tokens, embed, hidden, bias, head])
    [muon] = [g["params"] for g in opt.param_groups if g["use_muon"]]
    assert muon == [hidden]


@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (16, 144)])
def test_newton_schulz_orthogonalizes(shape):
    """timm's iteration with the reference's coefficients (what Muon here steps with)."""
    from timm.optim.muon import _COEFFICIENTS, zeropower_via_newtonschulz

    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    X = zeropower_via_newtonschulz(G, 5, _COEFFICIENTS["original"])
    assert X.dtype == torch.bfloat16 and X.shape == G.shape
    s = torch.linalg.svdvals(X.float())
    assert BAND[0] <= s.min() and s.max() <= BAND[1], s


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])  # wide; tall (scaled by sqrt(2))
def test_a_2d_update_equals_torch_muon(shape):
    """Anchors the implementation: the same steps as torch.optim.Muon with Keller Jordan's lr
    adjustment ("original"), bit for bit, momentum buffer and weights."""
    gen = torch.Generator().manual_seed(1)
    stem, head = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4, 4))
    p = nn.Parameter(torch.randn(shape, generator=gen))
    q = nn.Parameter(p.detach().clone())
    ours = make_muon([stem, p, head], lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.1)
    theirs = torch.optim.Muon([q], lr=0.02, momentum=0.95, nesterov=True, ns_steps=5,
                              weight_decay=0.1, ns_coefficients=(3.4445, -4.7750, 2.0315),
                              adjust_lr_fn="original")
    for _ in range(3):
        p.grad = torch.randn(shape, generator=gen)
        q.grad = p.grad.clone()
        ours.step()
        theirs.step()
        assert torch.equal(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"])
        assert torch.equal(p, q)


def test_the_adamw_side_equals_torch_adamw():
    gen = torch.Generator().manual_seed(2)
    p = nn.Parameter(torch.randn(16, generator=gen))
    q = nn.Parameter(p.detach().clone())
    ours = make_muon([p], adamw_lr=1e-3, adamw_betas=(0.9, 0.95), adamw_eps=1e-10, adamw_weight_decay=0.1)
    theirs = torch.optim.AdamW([q], lr=1e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.1,
                               foreach=False)
    for _ in range(3):
        p.grad = torch.randn(16, generator=gen)
        q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    assert torch.equal(p, q)


@pytest.mark.parametrize("kernel,scale", [((16, 8, 3, 3), 1.0), ((32, 16, 1, 1), 2 ** 0.5)])
def test_conv_kernels_update_through_the_flattened_matrix(kernel, scale):
    """A kernel's step is an orthogonalized (out, in*kh*kw) matrix, scaled by that matrix's
    sqrt(max(1, rows/cols)): 1 for a 3x3 kernel, sqrt(2) for a 1x1 that doubles the channels."""
    stem, head = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Parameter(torch.randn(10, 8))
    w = nn.Parameter(torch.randn(kernel))
    opt = make_muon([stem, w, head], lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0)
    before = w.detach().clone()
    w.grad = torch.randn(kernel, generator=torch.Generator().manual_seed(3))
    opt.step()
    step = (before - w.detach()).reshape(kernel[0], -1) / scale
    s = torch.linalg.svdvals(step)
    assert step.abs().sum() > 0 and BAND[0] <= s.min() and s.max() <= BAND[1], s
    assert opt.state[w]["momentum_buffer"].shape == kernel


def test_lr_scale_scales_the_muon_and_the_adamw_lr_of_its_group():
    stem, hidden, bias, hidden2, head = (nn.Parameter(torch.randn(s)) for s in
                                         [(8, 3, 3, 3), (8, 8, 3, 3), (8,), (16, 8, 3, 3), (10, 16)])
    opt = make_muon([{"params": [stem, hidden, bias], "lr_scale": 0.1}, {"params": [hidden2, head]}],
               lr=0.2, adamw_lr=1e-3)
    lrs = [(g["use_muon"], g.get("lr_scale"), g["lr"], len(g["params"])) for g in opt.param_groups]
    assert lrs == [(True, 0.1, pytest.approx(0.02), 1), (False, 0.1, pytest.approx(1e-4), 2),
                   (True, None, 0.2, 1), (False, None, 1e-3, 1)]
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # a schedule scales all alike
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 5e-5, 0.1, 5e-4])


def train_steps(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(8, 3, 8, 8, generator=gen)).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def tiny_convnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def test_state_dict_round_trip_continues_bit_exact():
    torch.manual_seed(0)
    model = tiny_convnet()
    opt = make_muon(model.parameters())
    train_steps(model, opt, 2, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as the checkpoint loads it
    again = tiny_convnet()
    again.load_state_dict(saved["model"])
    opt_again = make_muon(again.parameters(), lr=1.0, adamw_lr=1.0)  # the saved groups' settings win
    opt_again.load_state_dict(saved["opt"])
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt_again.param_groups] == \
           [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    train_steps(model, opt, 2, seed=2)
    train_steps(again, opt_again, 2, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_grad_scaler_unscales_and_skips_as_for_any_optimizer():
    """fp16's path: scaler.step unscales (exact for a power of two) and then steps, or skips
    the step when a gradient is inf."""
    torch.manual_seed(0)
    model, plain = tiny_convnet(), tiny_convnet()
    plain.load_state_dict(model.state_dict())
    opt, opt_plain = make_muon(model.parameters()), make_muon(plain.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    x = torch.randn(8, 3, 8, 8)
    scaler.scale(model(x).square().mean()).backward()
    scaler.step(opt)
    scaler.update()
    plain(x).square().mean().backward()
    opt_plain.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    next(model.parameters()).grad[0] = float("inf")
    scaler.step(opt)  # skipped
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0 ** 11


def test_build_optimizer_passes_no_fused_flag(compose_cfg):
    """job.build_optimizer asks for fused kernels on CUDA only where the factory takes `fused`."""
    cfg = compose_cfg(["experiment=smoke", "optim=muon"])
    options = check_config(cfg)
    assert options.fused_optimizer
    opt = build_optimizer(cfg, options, tiny_convnet(), torch.device("cuda"))  # builds nothing on it
    assert isinstance(opt, Muon) and opt.param_groups[0]["lr"] == cfg.optim.lr


def test_muon_as_sams_base_optimizer(compose_cfg):
    """optim=sam with Muon as the base: SAM's groups are Muon's (rho kept), one step moves
    every parameter."""
    cfg = compose_cfg(["experiment=smoke", "optim=sam", "optim@optim.base=muon"])
    options = check_config(cfg)
    model = MLP(num_classes=10, in_chans=3, image_size=32, width=16, depth=2)
    trainer = build_trainer(cfg, options, model, torch.device("cpu"), 768, BatchSchedule(options))
    assert isinstance(trainer.optimizer, SAM) and isinstance(trainer.optimizer.base_optimizer, Muon)
    assert all("rho" in g for g in trainer.optimizer.param_groups)
    assert {g["use_muon"] for g in trainer.optimizer.param_groups} == {True, False}
    before = [p.detach().clone() for p in model.parameters()]
    batch = (torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    trainer.optimizer_step([batch])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_layer_decay_groups_exempt_biases_and_norms_from_weight_decay_on_both_sides():
    """timm's layer-decay groups mark biases and norms with weight_decay 0: Muon's AdamW side
    must keep that, and decay its other parameters (stem, classifier) at adamw_weight_decay."""
    import timm

    from experiments.training.param_groups import param_groups

    model = timm.create_model("test_resnet", num_classes=10)
    opt = make_muon(param_groups(model, lr=0.02, weight_decay=0.0, layer_decay=0.75),
               lr=0.02, weight_decay=0.01, adamw_weight_decay=0.05)
    by_param = {id(p): (g["use_muon"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    kernels = [n for n, p in params.items() if p.ndim >= 2]
    assert all(by_param[id(p)] == (False, 0.0) for p in params.values() if p.ndim == 1)
    assert [by_param[id(params[n])] for n in (kernels[0], kernels[-1])] == [(False, 0.05)] * 2
    assert {by_param[id(params[n])] for n in kernels[1:-1]} == {(True, 0.01)}
