"""Row 5: the training-free proxies on real assemblies of the params file's zoo (random weights): candidates per
second of NASWOT, scored one candidate at a time as the proxy stage does (build, then a full forward per batch),
against the same scores with the block outputs of a shared prefix computed once (``naswot_shared`` below), and
the cost of every registered proxy per candidate.

Prefix reuse. Candidates are block sequences; two of them with the same stem, first blocks and (least-squares
initialised, so equal) adapters compute the same activations up to the point where they differ. NASWOT's kernel
is a sum over activation modules of 0/1 agreement counts (integers, exact in float64), so the kernel of a network
is the prefix's kernel plus the rest's, in any order: computing each distinct prefix once (a depth-first walk of
the candidates' prefix tree, keeping one prefix output per depth) gives the very same scores, bit for bit (checked
below on every candidate). The same walk in eval mode gives the final features of the feature proxies (KTA, LogME,
linear probe), which cost the stage more than NASWOT itself.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .common import Result, Row, fmt_s, median_times, probe_uint8, timed, yes, zoo_models

FORBID = [["tokens", "maps"]]      # the default reassembly.forbid: no Transformer -> CNN transition
N_TARGET = 500                     # the "NASWOT for 500 candidates"


# ------------------------------------------------------------------------ prefix-shared walk

def prefix_keys(blocks: list[dict[str, Any]], stem: str = "own", init: str = "lstsq", seed: int = 0) -> list[Hashable]:
    """keys[d] identifies what an assembly computes up to block d (stem, blocks 0..d, the adapters between them):
    equal keys promise equal weights, so equal outputs. A fresh stem or randomly initialised adapters depend on the
    candidate's seed, so from there on the key carries it (no sharing, exactly as correct as the plain path)."""
    keys: list[Hashable] = []
    unique = stem != "own"
    for d, b in enumerate(blocks):
        if d and init != "lstsq":
            prev = blocks[d - 1]
            unique = unique or not (prev["model"] == b["model"] and prev["end"] + 1 == b["start"])
        path = tuple((c["model"], c["start"], c["end"]) for c in blocks[: d + 1])
        keys.append((stem, init, path, seed if unique else None))
    return keys


def _steps(asm: nn.Module, depth: int) -> list[nn.Module]:
    """The modules an ``Assembly`` runs between block ``depth - 1``'s output and block ``depth``'s."""
    return [asm.stem if depth == 0 else asm.adapters[depth - 1], asm.blocks[depth]]


def _walk(models: Callable[[int], nn.Module], keys: Sequence[Sequence[Hashable]], start: Any,
          step: Callable[[nn.Module, int, Any], Any], finish: Callable[[nn.Module, Any], Any]) -> list[Any]:
    """Depth-first over the candidates' prefix tree: ``step`` runs one depth of a group's first member on the
    parent's state, every member continues from it; ``finish`` turns a complete network's state into its result.
    Only the current path's states are alive; each candidate is built (``models(i)``) once, when first needed."""
    out: list[Any] = [None] * len(keys)
    built: dict[int, nn.Module] = {}

    def get(i: int) -> nn.Module:
        if i not in built:
            built.clear()                  # depth-first: the previous candidate is never needed again
            built[i] = models(i)
        return built[i]

    def rec(members: list[int], depth: int, state: Any) -> None:
        groups: dict[Hashable, list[int]] = {}
        for i in members:
            groups.setdefault(keys[i][depth], []).append(i)
        for g in groups.values():
            st = step(get(g[0]), depth, state)
            for i in g:
                if len(keys[i]) == depth + 1:
                    out[i] = finish(get(i), st)
            rest = [i for i in g if len(keys[i]) > depth + 1]
            if rest:
                rec(rest, depth + 1, st)

    rec(list(range(len(keys))), 0, start)
    return out


def _run_hooked(modules: list[nn.Module], x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Run ``modules`` in sequence in train mode (their BatchNorm statistics restored after), adding every activation
    input's agreement counts to the kernel ``k`` in place, as ``dery.proxy.naswot_kernel`` does for a whole network."""
    from dery.proxy import _train_mode_untouched, activation_modules

    n = x.shape[0]

    def hook(mod, inp):
        c = (inp[0].detach().reshape(n, -1) > 0).double()
        k.add_(c @ c.T).add_((1 - c) @ (1 - c).T)

    handles = [a.register_forward_pre_hook(hook) for m in modules for a in activation_modules(m)]
    try:
        with contextlib.ExitStack() as stack, torch.no_grad():
            for m in modules:
                stack.enter_context(_train_mode_untouched(m))
            for m in modules:
                x = m(x)
                if isinstance(x, (tuple, list)):
                    x = x[0]
    finally:
        for h in handles:
            h.remove()
    return x


def naswot_shared(models: Callable[[int], nn.Module], keys: Sequence[Sequence[Hashable]],
                  batches: list[torch.Tensor]) -> list[float]:
    """``dery.proxy.naswot`` of many ``stitching.Assembly`` networks, each distinct prefix computed once."""
    from dery.proxy import activation_modules

    def step(asm, depth, state):
        new = []
        for x, k in state:
            k = k.clone()
            new.append((_run_hooked(_steps(asm, depth), x.clone(), k), k))
        return new

    def finish(asm, state):
        ks = state
        if activation_modules(asm.head):   # stitching.Head has none; any other head is run as in the plain forward
            ks = [(None, k.clone()) for _, k in state]
            for (x, _), (_, k) in zip(state, ks, strict=True):
                _run_hooked([asm.head], x.clone(), k)
        score = float(np.mean([float(torch.linalg.slogdet(k)[1]) for _, k in ks]))
        if not np.isfinite(score):
            raise FloatingPointError("NASWOT score is not finite (a singular kernel: identical codes for two images)")
        return score

    start = [(x, torch.zeros(len(x), len(x), dtype=torch.float64)) for x in batches]
    return _walk(models, keys, start, step, finish)


def final_features_shared(models: Callable[[int], nn.Module], keys: Sequence[Sequence[Hashable]],
                          batches: list[torch.Tensor]) -> list[np.ndarray]:
    """``dery.proxy.final_features`` (eval mode, the head's pooling) of many assemblies, shared prefixes once."""
    from dery.features import pool

    @torch.no_grad()
    def step(asm, depth, state):
        mods = _steps(asm, depth)
        was = [m.training for m in mods]
        for m in mods:
            m.eval()
        try:
            new = []
            for x in state:
                for m in mods:
                    x = m(x)
                    if isinstance(x, (tuple, list)):
                        x = x[0]
                new.append(x)
            return new
        finally:
            for m, w in zip(mods, was, strict=True):
                m.train(w)

    def finish(asm, state):
        return torch.cat([pool(x, asm.head.port.fmt) for x in state]).double().numpy()

    return _walk(models, keys, list(batches), step, finish)


# ------------------------------------------------------------------------------ the candidates

def even_blocks(n_nodes: int, k: int, shift: int = 0) -> list[tuple[int, int]]:
    """K contiguous 1-based node ranges covering 1..n; ``shift`` moves every inner cut by that many nodes."""
    cuts = [0] + [min(max(round(i * n_nodes / k) + shift, i), n_nodes - (k - i)) for i in range(1, k)] + [n_nodes]
    return [(cuts[s] + 1, cuts[s + 1]) for s in range(k)]


def candidate_space(infos: dict[str, Any], k: int, shifts: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """Every K-tuple (one block per stage, any models, each model cut evenly, shifted by each of ``shifts``) that
    the default transition rule allows, as candidate specs."""
    from dery.reassembly import allowed

    per_stage: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    for m, info in sorted(infos.items()):
        n = len(info.trace.nodes)
        for sh in shifts:
            for s, (a, e) in enumerate(even_blocks(n, k, sh)):
                b = {"model": m, "start": a, "end": e, "stage": s,
                     "fmt_in": info.meta["fmt"][a - 1], "fmt_out": info.meta["fmt"][e]}
                if b not in per_stage[s]:
                    per_stage[s].append(b)
    out = []
    for combo in itertools.product(*per_stage):
        if all(allowed(a, b, FORBID) for a, b in zip(combo, combo[1:], strict=False)):
            out.append({"id": f"c{len(out):04d}", "blocks": [dict(b) for b in combo]})
    return out


def stochastic(module: nn.Module) -> bool:
    """Whether a train-mode forward draws random numbers (DropPath / stochastic depth, dropout with p > 0)."""
    return any((getattr(m, "drop_prob", 0) or 0) > 0 or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
               for m in module.modules())


def deterministic(infos: dict[str, Any]) -> dict[str, Any]:
    """Copies of the zoo with stochastic depth and dropout switched off (for the equality check only: with them on,
    a train-mode NASWOT is a random draw and a different order of forwards draws different numbers)."""
    import copy
    import dataclasses

    out = {}
    for name, info in infos.items():
        model = copy.deepcopy(info.model)
        for m in model.modules():
            if (getattr(m, "drop_prob", 0) or 0) > 0:
                m.drop_prob = 0.0
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.p = 0.0
        out[name] = dataclasses.replace(info, model=model)
    return out


def _zoo_infos(params: dict[str, Any], probe_images: int) -> dict[str, Any]:
    from dery import data as D
    from dery import stitching as ST

    probe = D.to_images(probe_uint8(probe_images, seed=1))
    return {m: ST.dissect(model, probe) for m, model in zoo_models(params, num_classes=10).items()}


def _proxy_batches(params: dict[str, Any], feat_cap: int):
    from dery import data as D

    cfg = params["proxy"]
    n = cfg["batches"] * cfg["batch_size"]
    nf = min(cfg.get("feature_images", 500), feat_cap)
    raw = probe_uint8(max(n, nf), seed=2)
    x = D.to_images(raw)
    y = torch.as_tensor(np.arange(len(x)) % 10)
    return list(x[:n].split(cfg["batch_size"])), list(x[:nf].split(250)), y[:nf]


# ------------------------------------------------------------------------------------- the row

# sizes: probe images of the dissection, candidates timed, candidates checked for equal scores, candidates of the
# per-proxy table, candidates of the final-feature comparison, cap on the feature images, repeats
SIZES = {"full": (500, N_TARGET, 100, 20, 100, 10**9, 2), "quick": (128, 40, 16, 6, 16, 250, 1),
         "tiny": (16, 4, 4, 2, 2, 32, 1)}


def run(quick: bool, params: dict[str, Any], tiny: bool = False) -> Result:
    """Row 5 (``tiny``: a seconds-scale version for the tests). NumPy's BLAS gets torch's thread count, as a
    Snakemake job's OPENBLAS_NUM_THREADS = its threads."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(torch.get_num_threads()):
        return _run(quick, params, "tiny" if tiny else "quick" if quick else "full")


def _run(quick: bool, params: dict[str, Any], size: str) -> Result:
    from dery import proxy as PX
    from dery import stitching as ST

    res = Result()
    k = params["partition"]["K"]
    stem = params["reassembly"].get("stem", "own")
    init = params.get("stitching", {}).get("init", "lstsq")
    pcfg = params["proxy"]
    n_probe, n_cands, ncheck, nfew, nff, feat_cap, repeats = SIZES[size]
    infos, t_dissect = timed(lambda: _zoo_infos(params, n_probe))
    det = deterministic(infos)
    # quick: one even cut per model (the stage's own situation: one partition, tens of candidates per budget);
    # full: two cuts per model, so that 500 distinct candidates exist
    shifts = (0,) if quick else (0, 1)
    space = candidate_space(infos, k, shifts)
    order = np.random.default_rng(0).permutation(len(space))
    cands = [space[i] for i in order[: min(n_cands, len(space))]]
    nb = len(cands)
    probe, feat_batches, feat_y = _proxy_batches(params, feat_cap)
    keys = [prefix_keys(c["blocks"], stem, init, seed=i) for i, c in enumerate(cands)]

    def builder(zoo: dict[str, Any]) -> Callable[[int], nn.Module]:
        return lambda i: ST.build(cands[i], zoo, 10, stem, init, seed=i)[0]

    build = builder(infos)

    def naive(b: Callable[[int], nn.Module] = build, n: int = nb) -> list[float]:
        """As dery/stages/proxy.py: per candidate, build it, then NASWOT = a full train-mode forward per batch."""
        out = []
        for i in range(n):
            with torch.random.fork_rng():
                torch.manual_seed(i)
                out.append(PX.naswot(b(i), probe))
        return out

    def shared(b: Callable[[int], nn.Module] = build, n: int = nb) -> list[float]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return naswot_shared(b, keys[:n], probe)

    # same scores, bit for bit, with stochastic depth off; with it on (the zoo's Swin), both are seeded random draws
    ncheck = min(nb, ncheck)
    identical = naive(builder(det), ncheck) == shared(builder(det), ncheck)
    n_stoch = sum(stochastic(build(i)) for i in range(ncheck))
    _, t_build = timed(lambda: [build(i) is None for i in range(nb)])
    t = median_times({"naive": naive, "shared": shared}, repeats, warmup=False)
    distinct = [len({kk[d] for kk in keys}) for d in range(k)]

    # per-candidate cost of every registered proxy (the stage's way: the feature proxies share one final-feature pass)
    few = [build(i) for i in range(min(nb, nfew))]
    nfew = len(few)
    per: dict[str, float] = {}
    for asm in few:
        for name in PX.PROXIES:
            if name not in PX.FEATURE_SCORES:
                _, dt = timed(lambda name=name, asm=asm: PX.PROXIES[name](asm, probe, None))
                per[name] = per.get(name, 0.0) + dt / nfew
        feats, dt = timed(lambda asm=asm: PX.final_features(asm, feat_batches))
        per["final features (for kta, logme, linear_probe)"] = per.get(
            "final features (for kta, logme, linear_probe)", 0.0) + dt / nfew
        for name, fn in PX.FEATURE_SCORES.items():
            _, dt = timed(lambda fn=fn, feats=feats: fn(feats, feat_y))
            per[name] = per.get(name, 0.0) + dt / nfew
    del few

    # the final features (eval mode: deterministic) with prefix reuse, on the first candidates
    nff = min(nb, nff)
    tf = median_times({"naive": lambda: [PX.final_features(build(i), feat_batches) for i in range(nff)],
                       "shared": lambda: final_features_shared(build, keys[:nff], feat_batches)}, 1, warmup=False)
    same_feats = all(np.array_equal(a, PX.final_features(build(i), feat_batches))
                     for i, a in enumerate(final_features_shared(build, keys[:nff], feat_batches)))

    b_each = t_build / nb
    cps_naive, cps_shared = nb / t["naive"], nb / t["shared"]
    naswot_each = t["naive"] / nb - b_each
    imgs = f"{pcfg['batches']}x{pcfg['batch_size']} images"
    res.rows.append(Row("5", f"proxy: NASWOT ({imgs}) of {nb} assemblies of the {len(infos)}-model zoo (K={k}), "
                        "one by one as the stage (build included)",
                        f"{cps_naive:.2f} candidates/s ({1 / max(naswot_each, 1e-9):.2f}/s NASWOT alone)",
                        f"{N_TARGET} candidates: {fmt_s(N_TARGET / cps_naive)}", "-", "report candidates/s",
                        "reported"))
    res.rows.append(Row("5", f"... block outputs of shared prefixes reused (distinct prefixes at depth "
                        f"1..{k}: {', '.join(map(str, distinct))} of {nb}); same scores: {yes(identical)}",
                        f"{cps_shared:.2f} candidates/s", f"{cps_naive:.2f} candidates/s one by one",
                        f"{t['naive'] / t['shared']:.2f}x faster", "reuse where it pays",
                        (yes(identical and t["shared"] < t["naive"])
                         + "; prototype here, the stage does not use it yet")))
    res.rows.append(Row("5", f"... final features of the feature proxies ({sum(len(b) for b in feat_batches)} images, "
                        f"{nff} candidates) with shared prefixes; identical: {yes(same_feats)}",
                        fmt_s(tf["shared"] / nff) + "/candidate", fmt_s(tf["naive"] / nff) + "/candidate one by one",
                        f"{tf['naive'] / tf['shared']:.2f}x faster", "reported", "-"))
    lines = ["| per candidate | CPU time |", "|---|---|",
             f"| build (`stitching.build`, {init} adapters) | {fmt_s(b_each)} |"]
    lines += [f"| {name} | {fmt_s(v)} |" for name, v in per.items()]
    res.notes.append(
        "### Row 5: proxies\n\n"
        f"The params file's zoo ({', '.join(infos)}) with random weights, dissected on probe images "
        f"({fmt_s(t_dissect)}), each model cut into K={k} even blocks"
        + (" and, again, with every inner cut one node later" if len(shifts) > 1 else "")
        + f"; candidates: {nb} of the {len(space)} block sequences (one block per stage, any models, the default "
        f"`forbid` rule), drawn at random (seeded), built by `stitching.build` (own stem, {init} adapters). "
        "'One by one' is what `dery/stages/proxy.py` does (per candidate: build, then `proxy.naswot`, a full "
        "train-mode forward per batch); 'shared' is `benchmarks/bench_proxy.py:naswot_shared`, a depth-first walk of "
        "the candidates' prefix tree running each distinct (stem, blocks, adapters) prefix once and keeping one "
        "prefix output per depth; it builds every candidate once too, so both sides include the builds. NASWOT's "
        "kernel is a sum of integer agreement counts over activation modules, so the walk gives the same scores bit "
        f"for bit: checked on {ncheck} candidates with stochastic depth switched off. With it on ({n_stoch} of them "
        "hold a DropPath with p > 0, from the Swin model: timm's default drop_path_rate), a train-mode NASWOT is a "
        "seeded random draw on either path and the two paths draw different numbers. Sharing grows with the number "
        "of candidates per prefix; a random draw shares less than the ILP's top candidates, which concentrate on the "
        "best blocks. CPU time of this process, torch with 1 thread; interleaved.\n\n"
        f"Every registered proxy, mean over {nfew} candidates (the feature proxies score one final-feature pass over "
        f"{sum(len(b) for b in feat_batches)} images, listed on its own line; the stage uses "
        f"{pcfg.get('feature_images', 500)}):\n\n" + "\n".join(lines))
    if not (math.isfinite(cps_naive) and math.isfinite(cps_shared)):
        raise RuntimeError("row 5 measured nothing")
    return res
