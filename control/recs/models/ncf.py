"""NeuMF (He et al. 2017): a GMF tower and an MLP tower over user and item embeddings, fused by one layer.

Trained with PyTorch on CPU (the optional ``neural`` extra); scored with numpy alone, so a saved model
loads and serves where torch is not installed. torch is imported inside :meth:`NCF.fit` only.

The user side is built from the history rather than looked up by user id (the item-based user
representation of FISM and of NCF's own "a user is described by the items it interacted with"):
``p = |h|^-alpha * sum of the context embeddings of h``, one context table per tower. That is what the
:class:`Recommender` contract needs (any history is scorable, no per-user table to fold in), and in
training the positive being scored is left out of its own history, so the model learns to predict a
title from the *other* titles a profile holds, which is the task at serving time. Titles no training
profile holds get no embedding and rank below every other title.

Training: every positive against ``negatives`` titles drawn uniformly (a draw that happens to be a
positive stays in as label noise: at ~1 % density rejecting it is not worth a loop), binary cross-entropy
(as in the paper) or BPR, Adam, a fixed number of epochs; batches are groups of profiles, so each
history is summed once per step. Initial weights and sampling come from a numpy generator seeded with
``seed`` and torch runs on ``threads`` intra-op threads (restored afterwards), so two fits with the same
seed give identical weights. ``mlp_dim=0`` gives GMF alone and ``gmf_dim=0`` the
MLP alone, for the check Rendle et al. (2020) ask for: does the MLP earn its place over a dot product?

Measured with ``bench/recs_ncf.py`` (ml-latest-small, random 80/20 of ratings >= 4, seed 0; the same
split, tuning and scoring code as ``bench/recs.py``; NCF's settings chosen on the validation split carved
from training; fit seconds on a shared 2-core machine, so rough)::

    model                         NDCG@10  Recall@20  fit s
    EASE (tuned)                   0.2634     0.3060      2
    NCF, NeuMF (these defaults)    0.2069     0.2842     84
    GMF alone                      0.1912     0.2541     38
    pipeline (production)          0.2782     0.3263     72
    pipeline + NCF generator       0.2765     0.3247    439
    pipeline + NCF generator and
      candidate source             0.2772     0.3324    673

NCF alone is 0.79x EASE on NDCG@10 (0.93x on Recall@20). The MLP beats GMF alone (each tuned on
validation, GMF on a smaller grid) by x1.08, but a well-tuned dot product does better than both: ALS
scores 0.2506 in the same run, which is Rendle et al.'s point. In the pipeline NCF moves NDCG@10 by
-0.6 % as a feature generator and -0.4 % as a candidate source too (Recall@20 +1.9 % there), for 6-9x
the training time: short of the > 1 % NDCG@10 that would pay for torch in production. So NCF is **not**
in the production :class:`control.recs.pipeline.PipelineConfig`; it stays a registered model kind so the
measurement can be repeated (``bench/recs_ncf.py``) when the data grows.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from control.recs.dataset import TrainData
from control.recs.errors import ModelError
from control.recs.models.base import F32, Arrays, Recommender, item_counts

I64 = npt.NDArray[np.int64]
_LOSSES = ("bce", "bpr")
_PAIRS_PER_CHUNK = 1 << 18  # (profile, title) pairs through the numpy MLP at once: ~64 MB per layer of 64


def torch_available() -> bool:
    """Whether the optional ``neural`` extra is installed (NCF can be trained)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> F32:
    limit = float(np.sqrt(6.0 / (fan_in + fan_out)))
    return rng.uniform(-limit, limit, (fan_out, fan_in)).astype(np.float32)


class NCF(Recommender):
    kind = "ncf"

    def __init__(self, gmf_dim: int = 128, mlp_dim: int = 64, layers: tuple[int, ...] | list[int] = (128, 64, 32),
                 alpha: float = 0.5, negatives: int = 16, loss: str = "bce", epochs: int = 25,
                 batch_size: int = 1024, lr: float = 2e-3, l2: float = 1e-5, seed: int = 0,
                 threads: int = 1) -> None:
        super().__init__()
        if loss not in _LOSSES:
            raise ModelError(f"ncf: loss must be one of {_LOSSES}, got {loss!r}")
        if gmf_dim < 0 or mlp_dim < 0 or gmf_dim + mlp_dim == 0:
            raise ModelError("ncf: needs a GMF tower (gmf_dim > 0), an MLP tower (mlp_dim > 0) or both")
        if mlp_dim > 0 and not layers:
            raise ModelError("ncf: an MLP tower needs at least one hidden layer")
        self.gmf_dim = gmf_dim
        self.mlp_dim = mlp_dim
        self.layers = tuple(int(w) for w in layers) if mlp_dim > 0 else ()
        self.alpha = alpha
        self.negatives = negatives
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.l2 = l2
        self.seed = seed
        self.threads = threads
        self.weights: Arrays = {}

    def params(self) -> dict[str, Any]:
        return {"gmf_dim": self.gmf_dim, "mlp_dim": self.mlp_dim, "layers": list(self.layers), "alpha": self.alpha,
                "negatives": self.negatives, "loss": self.loss, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "l2": self.l2, "seed": self.seed,
                "threads": self.threads}

    def _init_weights(self, rng: np.random.Generator, n: int) -> dict[str, F32]:
        w: dict[str, F32] = {}
        for name, dim in (("g", self.gmf_dim), ("m", self.mlp_dim)):
            w[f"{name}_item"] = rng.normal(0.0, 0.01, (n, dim)).astype(np.float32)
            w[f"{name}_ctx"] = rng.normal(0.0, 0.01, (n, dim)).astype(np.float32)
        fan_in = 2 * self.mlp_dim
        for li, width in enumerate(self.layers):
            w[f"mlp{li}_w"] = _glorot(rng, fan_in, width)
            w[f"mlp{li}_b"] = np.zeros(width, np.float32)
            fan_in = width
        fused = self.gmf_dim + (self.layers[-1] if self.layers else 0)
        w["out_w"] = _glorot(rng, fused, 1).ravel()
        w["item_bias"] = np.zeros(n, np.float32)
        return w

    def fit(self, data: TrainData) -> Self:
        try:
            import torch
        except ImportError:
            raise ModelError("ncf: training needs PyTorch; install the 'neural' extra (pip install "
                             "'nearcast[neural]')") from None
        active = np.flatnonzero(item_counts(data) > 0).astype(np.int64)
        if len(active) < 2:
            raise ModelError("ncf: needs at least two titles with a training positive")
        x = sp.csr_matrix(data.matrix[:, active], dtype=np.float32)
        x.sort_indices()
        sizes = np.diff(x.indptr)
        rng = np.random.default_rng(self.seed)
        init = self._init_weights(rng, len(active))
        fn = torch.nn.functional
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            params = {k: torch.from_numpy(v).requires_grad_(True) for k, v in init.items()}
            opt = torch.optim.Adam(list(params.values()), lr=self.lr, weight_decay=self.l2)
            for _ in range(self.epochs):
                order = rng.permutation(x.shape[0])
                for users in self._user_batches(order[sizes[order] > 0], sizes):
                    hist = x[users]
                    n_pos = hist.nnz
                    row = torch.from_numpy(np.repeat(np.arange(len(users)), np.diff(hist.indptr)))
                    pos = torch.from_numpy(hist.indices.astype(np.int64))
                    neg = torch.from_numpy(rng.integers(0, len(active), n_pos * self.negatives))
                    n_u = np.maximum(sizes[users], 1).astype(np.float32)
                    # a positive is scored from the *rest* of its history; a negative is not in the history
                    pos_norm = torch.from_numpy(np.maximum(n_u - 1.0, 1.0) ** -self.alpha)[row, None]
                    neg_norm = torch.from_numpy(n_u ** -self.alpha)[row.repeat_interleave(self.negatives), None]
                    offsets = torch.from_numpy(hist.indptr[:-1].astype(np.int64))
                    pos_towers: list[torch.Tensor] = []
                    neg_towers: list[torch.Tensor] = []
                    for tower in self._towers():
                        ctx = params[f"{tower}_ctx"]
                        summed = fn.embedding_bag(pos, ctx, offsets, mode="sum")[row]
                        pos_user = (summed - ctx[pos]) * pos_norm
                        neg_user = summed.repeat_interleave(self.negatives, dim=0) * neg_norm
                        pos_towers.append(self._tower(torch, params, tower, pos_user, pos))
                        neg_towers.append(self._tower(torch, params, tower, neg_user, neg))
                    s_pos = torch.cat(pos_towers, dim=1) @ params["out_w"] + params["item_bias"][pos]
                    s_neg = (torch.cat(neg_towers, dim=1) @ params["out_w"] + params["item_bias"][neg]).view(
                        n_pos, self.negatives)
                    if self.loss == "bce":
                        loss = (fn.binary_cross_entropy_with_logits(s_pos, torch.ones_like(s_pos), reduction="sum")
                                + fn.binary_cross_entropy_with_logits(s_neg, torch.zeros_like(s_neg),
                                                                      reduction="sum")) / n_pos
                    else:
                        loss = -fn.logsigmoid(s_pos[:, None] - s_neg).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            self.weights = {k: np.array(v.detach().numpy(), dtype=np.float32) for k, v in params.items()}
        finally:
            torch.set_num_threads(saved_threads)
        self.weights["active"] = active
        self.n_items = data.n_items
        return self

    def _towers(self) -> tuple[str, ...]:
        return tuple(t for t, dim in (("g", self.gmf_dim), ("m", self.mlp_dim)) if dim > 0)

    def _tower(self, torch: Any, params: dict[str, Any], tower: str, user: Any, items: Any) -> Any:
        """One tower's output for (user vector, title) pairs: GMF's product or the MLP's last layer.

        torch values are typed ``Any`` here so the module type-checks where torch is not installed.
        """
        item = params[f"{tower}_item"][items]
        if tower == "g":
            return user * item
        z = torch.cat([user, item], dim=1)
        for li in range(len(self.layers)):
            z = torch.relu(torch.nn.functional.linear(z, params[f"mlp{li}_w"], params[f"mlp{li}_b"]))
        return z

    def _user_batches(self, order: I64, sizes: I64) -> list[I64]:
        """Consecutive profiles of ``order`` grouped until a group holds ``batch_size`` positives."""
        ends = np.searchsorted(np.cumsum(sizes[order]), np.arange(self.batch_size, sizes.sum() + self.batch_size,
                                                                 self.batch_size), side="left")
        cuts = np.unique(np.minimum(ends + 1, len(order)))
        return [b for b in np.split(order, cuts) if len(b)]

    def _score(self, history: sp.csr_matrix) -> F32:
        w = self.weights
        active = w["active"]
        h = sp.csr_matrix(history[:, active], dtype=np.float32)
        h.data[:] = 1.0
        norm = (np.maximum(np.asarray(h.sum(axis=1)).ravel(), 1.0) ** -self.alpha).astype(np.float32)[:, None]
        scores = np.tile(w["item_bias"], (h.shape[0], 1))
        out_w = w["out_w"]
        if self.gmf_dim:
            user = np.asarray(h @ w["g_ctx"], dtype=np.float32) * norm
            scores += (user * out_w[: self.gmf_dim]) @ w["g_item"].T
        if self.mlp_dim:
            scores += self._mlp_scores(np.asarray(h @ w["m_ctx"], dtype=np.float32) * norm, out_w[self.gmf_dim :])
        out = np.empty((h.shape[0], self.n_items), np.float32)
        out[:] = (scores.min(axis=1, initial=0.0) - 1.0)[:, None]  # titles without an embedding come last
        out[:, active] = scores
        return out

    def _mlp_scores(self, user: F32, out_w: F32) -> F32:
        """The MLP tower for every (profile, title) pair; the first layer is split so each side is computed once."""
        w = self.weights
        d = self.mlp_dim
        w0 = w["mlp0_w"]
        user_part = user @ w0[:, :d].T + w["mlp0_b"]
        item_part = w["m_item"] @ w0[:, d:].T
        n_items = item_part.shape[0]
        out = np.empty((user.shape[0], n_items), np.float32)
        step = max(1, _PAIRS_PER_CHUNK // max(n_items, 1))
        for start in range(0, user.shape[0], step):
            z = np.maximum(user_part[start : start + step, None, :] + item_part[None, :, :], 0.0)
            z = z.reshape(-1, z.shape[-1])
            for li in range(1, len(self.layers)):
                z = np.maximum(z @ w[f"mlp{li}_w"].T + w[f"mlp{li}_b"], 0.0)
            out[start : start + step] = (z @ out_w).reshape(-1, n_items)
        return out

    def _arrays(self) -> Arrays:
        return dict(self.weights)

    def _restore(self, arrays: Arrays) -> None:
        names = ["active", "out_w", "item_bias"]
        names += [f"{t}_{k}" for t in ("g", "m") for k in ("item", "ctx")]
        names += [f"mlp{li}_{p}" for li in range(len(self.layers)) for p in ("w", "b")]
        self.weights = {n: arrays[n].astype(np.int64 if n == "active" else np.float32) for n in names}
