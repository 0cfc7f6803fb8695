"""DCP-Prune (ACGR → κ → TATCS) in PyTorch, the way research code runs it: dense tensor ops, no
custom kernels. It is the speed peer of the native core in `dcp-bench prune`, not a product path;
the contract is native/prune.h's (a test checks it picks the same tokens on random inputs).
"""

from __future__ import annotations

import torch


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _top_k(score: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(-score, stable=True).indices[:k]  # ties → lower row


def kappa(a, masses_a, b) -> torch.Tensor:
    """1 − the mass-weighted mean best cosine of a's rows to b's (prune.h's dcp_kappa)."""
    best = (_unit(a) @ _unit(b).T).max(dim=1).values
    return torch.clamp(1.0 - (masses_a * best).sum() / masses_a.sum(), min=0.0)


def acgr(x, s, keys, masses, grid_w: int, n_keep: int, options: dict):
    """x (n, d), s (n,), keys (n, dk), masses (n,) → (rows (M,), features (M, d), masses (M,))."""
    n = len(x)
    anchors = torch.sort(_top_k(s, n_keep)).values  # (M,) in row order, so link ties go to the lower row
    is_context = torch.ones(n, dtype=torch.bool)
    is_context[anchors] = False
    context = torch.nonzero(is_context).squeeze(1)  # (C,)
    u = _unit(keys)
    rc = torch.stack([torch.arange(n) // grid_w, torch.arange(n) % grid_w], 1).to(x.dtype)  # (n, 2)
    dist2 = torch.cdist(rc[context], rc[anchors]) ** 2  # (C, M)
    sigma = options["acgr_spatial_sigma"]
    semantic = u[context] @ u[anchors].T  # (C, M)
    affinity = torch.where(semantic > options["acgr_min_similarity"],
                           semantic + options["acgr_spatial_weight"] * torch.exp(-dist2 / (2 * sigma**2)), -torch.inf)
    n_nb = min(int(options["acgr_n_neighbors"]), n_keep)
    best = torch.sort(-affinity, dim=1, stable=True).indices[:, :n_nb]  # (C, n_nb)
    links = torch.zeros_like(affinity).scatter_(1, best, affinity.gather(1, best).clamp_min(0))
    weights = links / links.sum(1, keepdim=True).clamp_min(1e-30)  # (C, M)
    rho = torch.clamp(s[context] / s.mean(), max=1.0) if s.mean() > 0 else torch.ones(len(context), dtype=x.dtype)
    pull = weights * (rho * masses[context])[:, None]  # (C, M)
    absorbed = pull.sum(0)  # (M,)
    numer = masses[anchors, None] * x[anchors] + pull.T @ x[context]  # (M, d)
    denom = masses[anchors] + absorbed
    feats = numer / denom[:, None]
    f = options["acgr_self_share"]
    diluted = (masses[anchors] < f * denom) & (absorbed > 0)  # an anchor keeps at least f of its own feature
    mean_absorbed = (pull.T @ x[context]) / absorbed.clamp_min(1e-30)[:, None]
    feats = torch.where(diluted[:, None], f * x[anchors] + (1 - f) * mean_absorbed, feats)
    new_masses = masses[anchors] + (weights * masses[context][:, None]).sum(0)
    return anchors, feats, new_masses


def _minmax(r):
    span = r.max() - r.min()
    return (r - r.min()) / span if span > 0 else torch.ones_like(r)


def tatcs(x, s, text, masses, n_keep: int, options: dict):
    """Text-aware cluster selection on all rows → (rows (K,), features (K, d), masses (K,))."""
    n = len(x)
    xh = _unit(x)
    s_tilde = s / s.max() if s.max() > 0 else torch.ones_like(s)
    use_text = text is not None and len(text) and int(options["tatcs_use_text"])
    r = _minmax((xh @ _unit(text).T).max(1).values) if use_text else torch.ones(n, dtype=x.dtype)
    g = s_tilde * r
    g = g if g.max() > 0 else torch.ones_like(g)
    centres = [int(torch.argmax(g))]
    sims = [xh @ xh[centres[0]]]  # one (n,) row per centre, reused by the assignment
    min_dist = 1 - sims[0]
    for _ in range(n_keep - 1):
        priority = min_dist * (0.5 + 0.5 * g / g.max())
        priority[centres] = -1
        nxt = int(torch.argmax(priority)) if priority.max() > 0 else int(torch.argmax(g.index_fill(0, torch.tensor(centres), -1)))
        centres.append(nxt)
        sims.append(xh @ xh[nxt])
        min_dist = torch.minimum(min_dist, 1 - sims[-1])
    centre_rows = torch.tensor(centres)
    score = torch.stack(sims, 1) - options["tatcs_text_weight"] * (r[:, None] - r[centre_rows][None]).abs()  # (n, K)
    cluster = torch.argmax(score, 1)
    cluster[centre_rows] = torch.arange(n_keep)
    rows, feats, out_masses = [], [], []
    eta = options["tatcs_relevance_mix"]
    for k in range(n_keep):
        members = torch.nonzero(cluster == k).squeeze(1)
        direction = _unit((masses[members, None] * xh[members]).sum(0))
        preferred = s_tilde if int(options["tatcs_reselect_by"]) else r
        rep = members[int(torch.argmax(eta * preferred[members] + (1 - eta) * (xh[members] @ direction)))]
        omega = masses[members] * torch.clamp(xh[members] @ xh[rep], min=0)
        omega[members == rep] = masses[rep]
        rows.append(int(rep))
        feats.append(x[rep] if options["tatcs_reselect"] else (omega[:, None] * x[members]).sum(0) / omega.sum())
        out_masses.append(masses[members].sum())
    return torch.tensor(rows), torch.stack(feats), torch.stack(out_masses)


def dcp(x, s, keys, text, grid_w: int, n_keep: int, options: dict):
    """DCP-Prune at the output layer on the full grid: (rows, features, masses, κ, used_tatcs)."""
    masses = torch.ones(len(x), dtype=x.dtype)
    rows, feats, new_masses = acgr(x, s, keys, masses, grid_w, n_keep, options)
    k = kappa(x, masses, feats)
    used_tatcs = bool(k > options["tau"])
    if used_tatcs and int(options["dcp_anchors_per_token"]) == 0:
        rows, feats, new_masses = tatcs(x, s, text, masses, n_keep, options)
        k = kappa(x, masses, feats)
    elif used_tatcs:  # TATCS re-clusters the recovered anchors of a wider ACGR
        n_anchors = min(len(x), int(options["dcp_anchors_per_token"]) * n_keep)
        anchors, anchor_feats, anchor_masses = acgr(x, s, keys, masses, grid_w, n_anchors, options)
        picked, feats, new_masses = tatcs(anchor_feats, s[anchors], text, anchor_masses, n_keep, options)
        rows = anchors[picked]
        k = kappa(x, masses, feats)
    order = torch.argsort(rows)
    return rows[order], feats[order], new_masses[order], float(k), used_tatcs
