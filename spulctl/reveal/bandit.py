"""Which instruction to try next: NeuralUCB with a diagonal U (as INSTINCT uses it), and uniform choice.

NeuralUCB (Zhou, Li and Gu, 2020) fits a small network f(x; θ) to the rewards seen so far and plays the arm with
the highest upper confidence bound ``f(x) + ν·sqrt(Σ_j g_j² / U_j)``, g = ∂f(x)/∂θ flattened. U starts at λ and
grows by g² of every arm played, so an arm's bonus shrinks in the directions the data already covers. The full
method keeps U as a p×p matrix; its diagonal costs p floats and is what instruction-optimisation work uses.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class RandomBandit:
    """Uniform choice among the arms (the baseline)."""

    def __init__(self, features: torch.Tensor, seed: int = 0) -> None:
        self.n_arms = int(features.shape[0])
        self.rng = random.Random(seed)

    def select(self, k: int = 1) -> list[int]:
        """``k`` arms drawn uniformly, without repeats while there are enough arms."""
        if k <= self.n_arms:
            return self.rng.sample(range(self.n_arms), k)
        return [self.rng.randrange(self.n_arms) for _ in range(k)]

    def update(self, arms: list[int], rewards: list[float]) -> None:
        """Uniform choice learns nothing."""

    def restore(self, arms: list[int], rewards: list[float]) -> None:
        """Resume: move the generator past the picks already made."""
        for _ in arms:
            self.select(1)


class NeuralUCB:
    """NeuralUCB over a fixed set of arms.

    Args:
        features: (K, e) arm features (the instructions' unit embeddings).
        hidden: width of the one hidden layer.
        lam: λ, the initial value of the diagonal U (and the weight decay of the fit, as in the paper).
        nu: ν, the weight of the exploration bonus.
        epochs: full-batch Adam steps per refit.
        lr: Adam learning rate.
        seed: seeds the network's initialisation.
    """

    def __init__(self, features: torch.Tensor, hidden: int = 32, lam: float = 1.0, nu: float = 1.0,
                 epochs: int = 30, lr: float = 1e-2, seed: int = 0) -> None:
        import torch

        self.x = features.float()  # (K, e)
        g = torch.Generator().manual_seed(seed)
        e = self.x.shape[1]
        self.w1 = (torch.randn(e, hidden, generator=g) * (2.0 / e) ** 0.5).requires_grad_()  # (e, h)
        self.b1 = torch.zeros(hidden).requires_grad_()  # (h,)
        self.w2 = (torch.randn(hidden, 1, generator=g) * (1.0 / hidden) ** 0.5).requires_grad_()  # (h, 1)
        self.b2 = torch.zeros(1).requires_grad_()  # (1,)
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.u = torch.full((sum(p.numel() for p in self.params),), float(lam))  # (p,) diagonal of U
        self.lam, self.nu, self.epochs, self.lr = lam, nu, epochs, lr
        self.seen_x: list[int] = []
        self.seen_r: list[float] = []

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        """(n, e) -> (n,) predicted reward."""
        return ((x @ self.w1 + self.b1).relu() @ self.w2 + self.b2).squeeze(-1)

    def _grads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-arm gradient of f w.r.t. every parameter, flattened: (n, e) -> (n, p). Closed form for the MLP."""
        import torch

        with torch.no_grad():
            pre = x @ self.w1 + self.b1  # (n, h)
            act = (pre > 0).float()  # (n, h)
            d_pre = act * self.w2.squeeze(-1)  # (n, h) ∂f/∂pre
            g_w1 = x.unsqueeze(2) * d_pre.unsqueeze(1)  # (n, e, h)
            return torch.cat([g_w1.flatten(1), d_pre, pre.relu(), torch.ones(len(x), 1)], dim=1)  # (n, p)

    def ucb(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted reward and exploration bonus of every arm, each (K,)."""
        import torch

        with torch.no_grad():
            mu = self._f(self.x)
            bonus = self.nu * (self._grads(self.x).pow(2) / self.u).sum(1).sqrt()
        return mu, bonus

    def select(self, k: int = 1) -> list[int]:
        """``k`` arms, one at a time: each pick adds its g² to U before the next (shrinking the bonus of arms
        like it), and an arm is not repeated within a call while unpicked arms remain."""
        picks: list[int] = []
        for _ in range(k):
            mu, bonus = self.ucb()
            score = mu + bonus  # (K,)
            if len(picks) < len(score):
                score[picks] = float("-inf")
            arm = int(score.argmax())
            picks.append(arm)
            self.u += self._grads(self.x[arm:arm + 1])[0].pow(2)
        return picks

    def update(self, arms: list[int], rewards: list[float]) -> None:
        """Record (arm, reward) pairs and refit the network on everything seen (squared error + λ-weighted L2
        pull towards zero, scaled by the data size as in the paper's loss)."""
        import torch

        self.seen_x += arms
        self.seen_r += [float(r) for r in rewards]
        x = self.x[self.seen_x]  # (m, e)
        r = torch.tensor(self.seen_r)  # (m,)
        opt = torch.optim.Adam(self.params, lr=self.lr)
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = (self._f(x) - r).pow(2).mean() + self.lam * 1e-3 * sum(p.pow(2).sum() for p in self.params)
            loss.backward()
            opt.step()

    def restore(self, arms: list[int], rewards: list[float]) -> None:
        """Resume from a history of (arm, reward) pairs: refit, then rebuild U from the played arms' gradients
        under the refitted network (an approximation of the U an uninterrupted run would hold)."""
        if not arms:
            return
        self.update(arms, rewards)
        self.u += self._grads(self.x[arms]).pow(2).sum(0)


def make_bandit(kind: str, features: torch.Tensor, lam: float, nu: float, seed: int) -> NeuralUCB | RandomBandit:
    """The bandit named ``kind`` (``neuralucb`` or ``random``)."""
    if kind == "random":
        return RandomBandit(features, seed)
    return NeuralUCB(features, lam=lam, nu=nu, seed=seed)
