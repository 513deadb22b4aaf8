"""Many L2-regularised multinomial logistic regressions at once: a batched L-BFGS in torch.

The linear probe's C search (spec §9.2) fits the *same* model -- scikit-learn's
``LogisticRegression(C, solver="lbfgs", max_iter=1000)`` -- a few hundred times per domain: 7 grid
values plus the bisection, for 10 runs and 5 shot counts. Each fit is tiny (a few hundred rows of
128-d features), so one scikit-learn call spends its time in per-iteration overhead, and the fits
run one after another. Here every fit of a stage is one problem of a batch:

* problem ``b`` minimises sklearn's objective ``mean_i CE(x_i W_b + c_b, y_i) + |W_b|² / (2 C_b n_b)``
  (the intercept ``c_b`` is not penalised; ``n_b`` counts the problem's real rows -- shorter training
  sets are padded with rows of weight 0, which add nothing to the loss or the gradient);
* one batched matrix product gives every problem's logits, the gradient is analytic (no autograd);
* L-BFGS (history 10, scaled identity as the initial Hessian) with a backtracking Armijo line
  search, run in lockstep; a problem stops when ``max|grad| <= tol`` (scikit-learn's ``gtol``) or
  when its objective stops decreasing by more than 16 float32 epsilons (relative; scipy's ``ftol``
  test at float32 resolution), and converged problems leave the batch, so the long fits do not make
  the others pay;
* ``init`` warm-starts each problem (the C search starts each new C from the nearest C solved).

Precision follows the device: float32 everywhere (the objective's gradient tolerance of 1e-4 is far
above float32's resolution here). Two classes are fitted as a 2-way softmax with both columns
penalised; scikit-learn fits one logistic column there (the same classifier at C' = 2C), which the
probe never meets on LAION-Beyond or Mini-Beyond (>= 9 classes).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

HISTORY = 10
ARMIJO = 1e-4
MAX_HALVINGS = 20
#: Relative decrease below which a problem counts as converged, in units of the dtype's epsilon
#: (scipy's L-BFGS-B, which scikit-learn calls, stops at 64·eps of float64 on the same quantity).
FTOL_EPS = 2


@dataclass
class FitStats:
    """What :func:`fit` computed, for the benchmark's FLOP floor (``benchmarks.linear_probe --floor``):
    loss/gradient evaluations, the padded rows they covered (each row costs ``4·D·K`` FLOPs: the logits'
    and the gradient's batched products) and the seconds spent in them."""

    evaluations: int = 0
    rows: int = 0
    seconds: float = 0.0

    def gflop(self, dim: int, num_classes: int) -> float:
        return self.rows * dim * num_classes * 4 / 1e9


@dataclass
class Problems:
    """A batch of training sets: ``x [B, n, D]``, ``y [B, n]`` (long), ``weight [B, n]`` (1 real, 0 pad)."""

    x: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    num_classes: int

    @property
    def dim(self) -> int:
        return int(self.x.shape[-1])

    def select(self, idx: torch.Tensor) -> Problems:
        return Problems(self.x[idx], self.y[idx], self.weight[idx], self.num_classes)


def logits(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``x [B, n, D]`` and ``theta [B, D+1, K]`` (last row: intercepts) -> ``[B, n, K]``."""
    return torch.baddbmm(theta[:, -1:, :], x, theta[:, :-1, :])


def loss_and_grad(p: Problems, theta: torch.Tensor, inv_reg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """sklearn's objective per problem ``[B]`` and its gradient ``[B, D+1, K]``.

    ``inv_reg [B]`` is ``1 / (C · n_b)``: the weight of ``|W|² / 2`` next to the mean cross-entropy.
    """
    n = p.weight.sum(dim=1).clamp_min(1.0)
    z = logits(p.x, theta)
    logp = torch.log_softmax(z, dim=-1)
    nll = -logp.gather(-1, p.y.unsqueeze(-1)).squeeze(-1)
    w = theta[:, :-1, :]
    loss = (nll * p.weight).sum(dim=1) / n + 0.5 * inv_reg * w.pow(2).sum(dim=(1, 2))
    resid = logp.exp()
    resid.scatter_add_(-1, p.y.unsqueeze(-1), -torch.ones_like(nll).unsqueeze(-1))
    resid = resid * (p.weight / n.unsqueeze(1)).unsqueeze(-1)
    grad = torch.empty_like(theta)
    torch.bmm(p.x.transpose(1, 2), resid, out=grad[:, :-1, :])
    grad[:, :-1, :] += inv_reg.view(-1, 1, 1) * w
    grad[:, -1, :] = resid.sum(dim=1)
    return loss, grad


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(dim=1)


def _direction(grad: torch.Tensor, s_hist: torch.Tensor, y_hist: torch.Tensor, rho: torch.Tensor,
               gamma: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """L-BFGS two-loop recursion, batched, over the history slots ``order`` (oldest first); slots with
    ``rho == 0`` (no valid pair) are no-ops."""
    q = grad.clone()
    alphas = []
    for j in reversed(order):
        a = rho[:, j] * _bdot(s_hist[:, j], q)
        q -= a.view(-1, 1, 1) * y_hist[:, j]
        alphas.append(a)
    r = gamma.view(-1, 1, 1) * q
    for j, a in zip(order, reversed(alphas)):
        b = rho[:, j] * _bdot(y_hist[:, j], r)
        r += (a - b).view(-1, 1, 1) * s_hist[:, j]
    return -r


def fit(
    problems: Problems,
    c: torch.Tensor,
    init: Optional[torch.Tensor] = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    stats: Optional[FitStats] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fit every problem of the batch at its own ``C`` (``c [B]``); returns ``(theta [B, D+1, K], n_iter [B])``.

    ``init`` (same shape as the result) warm-starts the problems; zeros otherwise (sklearn's start).
    ``stats`` accumulates the loss/gradient work (:class:`FitStats`).
    """
    def evaluate(p: Problems, th: torch.Tensor, inv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if stats is None:
            return loss_and_grad(p, th, inv)
        start = time.perf_counter()
        out = loss_and_grad(p, th, inv)
        stats.seconds += time.perf_counter() - start
        stats.evaluations += 1
        stats.rows += int(p.x.shape[0]) * int(p.x.shape[1])
        return out

    x = problems.x
    bsz, device, dtype = x.shape[0], x.device, x.dtype
    theta = (torch.zeros(bsz, problems.dim + 1, problems.num_classes, device=device, dtype=dtype)
             if init is None else init.to(device=device, dtype=dtype).clone())
    n_iter = torch.zeros(bsz, dtype=torch.long, device=device)
    n = problems.weight.sum(dim=1).clamp_min(1.0)
    inv_reg_all = 1.0 / (c.to(device=device, dtype=dtype) * n)

    active = torch.arange(bsz, device=device)
    p = problems
    inv_reg = inv_reg_all
    th = theta
    f, g = evaluate(p, th, inv_reg)
    shape = (bsz, HISTORY) + tuple(theta.shape[1:])
    s_hist = torch.zeros(shape, device=device, dtype=dtype)
    y_hist = torch.zeros(shape, device=device, dtype=dtype)
    rho = torch.zeros(bsz, HISTORY, device=device, dtype=dtype)
    gamma = torch.ones(bsz, device=device, dtype=dtype)
    for it in range(int(max_iter)):
        done = g.flatten(1).abs().amax(dim=1) <= tol
        if bool(done.any()):
            theta[active[done]] = th[done]
            keep = ~done
            if not bool(keep.any()):
                active = active[keep]
                break
            active, p, inv_reg = active[keep], p.select(keep), inv_reg[keep]
            th, f, g = th[keep], f[keep], g[keep]
            s_hist, y_hist, rho, gamma = s_hist[keep], y_hist[keep], rho[keep], gamma[keep]
        stored = min(it, HISTORY)
        # a ring buffer: pair k lives in slot k % HISTORY (no per-iteration copy of the buffers)
        order = [(it - stored + i) % HISTORY for i in range(stored)]
        d = _direction(g, s_hist, y_hist, rho, gamma, order) if stored else -g
        slope = _bdot(g, d)
        uphill = slope >= 0  # lost curvature information: fall back to steepest descent
        if bool(uphill.any()):
            d[uphill] = -g[uphill]
            slope = torch.where(uphill, -_bdot(g, g), slope)
        # the first step of plain gradient descent is scaled to unit length (as scipy's first step)
        step = torch.ones_like(f) if stored else 1.0 / d.flatten(1).norm(dim=1).clamp_min(1e-12)
        new_th, new_f, new_g = th, f, g
        pending = torch.ones_like(f, dtype=torch.bool)
        for _ in range(MAX_HALVINGS):
            cand = th + step.view(-1, 1, 1) * d
            cf, cg = evaluate(p, cand, inv_reg)
            ok = pending & (cf <= f + ARMIJO * step * slope)
            if bool(ok.any()):
                new_th = torch.where(ok.view(-1, 1, 1), cand, new_th)
                new_f = torch.where(ok, cf, new_f)
                new_g = torch.where(ok.view(-1, 1, 1), cg, new_g)
                pending = pending & ~ok
            if not bool(pending.any()):
                break
            step = torch.where(pending, 0.5 * step, step)
        s, yv = new_th - th, new_g - g
        sy = _bdot(s, yv)
        valid = sy > 1e-10 * _bdot(yv, yv).clamp_min(1e-30)
        slot = it % HISTORY
        s_hist[:, slot], y_hist[:, slot] = s, yv
        rho[:, slot] = torch.where(valid, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / _bdot(yv, yv).clamp_min(1e-30), gamma)
        # no decrease at any step length, or one below the dtype's resolution: as converged as it gets
        ftol = FTOL_EPS * torch.finfo(dtype).eps
        stalled = pending | ((f - new_f) <= ftol * torch.maximum(f.abs(), new_f.abs()))
        th, f, g = new_th, new_f, new_g
        n_iter[active] += 1
        if bool(stalled.any()):
            g = torch.where(stalled.view(-1, 1, 1), torch.zeros_like(g), g)
    if len(active):
        theta[active] = th
    return theta, n_iter


def predict(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Class predictions ``[B, n]`` of each problem's classifier on its own rows ``x [B, n, D]``."""
    return logits(x, theta).argmax(dim=-1)
