"""Reassembly under budgets: block costs and the 0-1 program on SCIP (paper Eqs. 8-11).

Variables: x_b = 1 if block b is used; the block's position in the assembly is its stage
index. Constraints: exactly one block per equivalence set and one per stage position;
parameter and MAC budgets, counting blocks at their native input size, the stem, the head
and the adapter between each consecutive pair (linearised with pair variables y);
forbidden transitions (``forbid``): by model family as the authors' ``check_valid`` (CNN ->
Transformer allowed, Transformer -> CNN never, Swin being a Transformer), or by tensor layout
(``tokens``/``maps``) as an option. A block is placed at its stage index (paper: "blocks are
arranged by stage index"); its set only counts towards "one block per set", so a model whose
sets come out of depth order still contributes each block at its own depth.

An assembly whose blocks are one model's own blocks in order is that zoo model with a new head,
not a reassembly: ``single_model="drop"`` (default) excludes it (the zoo baselines already
train every zoo model), ``"keep"`` keeps it, labelled by ``single_model(blocks)``.

Cost convention: MACs (one multiply-accumulate = 1), as the paper's budgets (mmcv counts
MACs). ``torch.utils.flop_counter`` counts 2 FLOPs per MAC, so we halve its total.

The paper's objective (the proxy score of the whole network) is not linear, so as the paper
we use the program to *enumerate* feasible assemblies and rank them with the proxy after.
The enumeration order comes from a linear surrogate: the blocks' summed similarity to their
set's anchor (most typical blocks first).

Two exact enumerators give the same list (up to the order of equal surrogates):
- ``best_first`` (default): a best-first walk over partial assemblies, stage by stage, with an
  admissible bound (the best score still reachable) and budget pruning (the least cost still
  needed). Complete assemblies leave the queue in surrogate order, so the first n are the true
  top n; time grows with n, not with the product of the stage sizes.
- ``scip``: the 0-1 program re-solved with a no-good cut after each solution, as the paper's
  ILP. One solve per assembly: right for the optimum, slow for hundreds (benchmarks row 4).
``solve_optimal`` (SCIP) certifies the first one in the reassembly stage.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


class BudgetError(ValueError):
    pass


def count_macs(module: torch.nn.Module, *shape: int) -> int:
    """MACs of one forward pass on a batch of one ([1, *shape])."""
    x = torch.zeros(1, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.eval()(x)
    return counter.get_total_flops() // 2


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def key(b: dict[str, Any]) -> str:
    return f"{b['model']}:{b['start']}-{b['end']}"


def pair_key(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"{key(a)}>{key(b)}"


@dataclass
class Instance:
    """Everything the program needs; costs in params and MACs."""

    blocks: list[dict[str, Any]]          # each: model, stage, start, end, set, params, macs, fmt_in, fmt_out, score
    pairs: dict[str, dict[str, int]]      # pair_key -> {params, macs}
    stem: dict[str, dict[str, int]]       # key(stage-0 block) -> {params, macs}
    head: dict[str, dict[str, int]]       # key(last-stage block) -> {params, macs}
    k: int

    def totals(self, chosen: list[dict[str, Any]]) -> tuple[int, int]:
        p = self.stem[key(chosen[0])]["params"] + self.head[key(chosen[-1])]["params"]
        m = self.stem[key(chosen[0])]["macs"] + self.head[key(chosen[-1])]["macs"]
        for b in chosen:
            p, m = p + b["params"], m + b["macs"]
        for a, b in zip(chosen, chosen[1:], strict=False):
            p, m = p + self.pairs[pair_key(a, b)]["params"], m + self.pairs[pair_key(a, b)]["macs"]
        return p, m


FAMILIES, LAYOUTS = ("cnn", "transformer"), ("maps", "tokens")


def _kind(block: dict[str, Any], end: str, vocabulary: str) -> str:
    if vocabulary == "layout":
        return "tokens" if block[f"fmt_{end}"] == "NLC" else "maps"
    if f"fam_{end}" not in block:
        from .integrity import rebuild_command

        raise ValueError(f"block {key(block)} has no model family (block costs written before dery knew families); "
                         f"re-run the features and block costs and what follows: "
                         f"`{rebuild_command('extract_features', 'block_costs')}`.")
    return block[f"fam_{end}"]


def allowed(a: dict[str, Any], b: dict[str, Any], forbid: list[list[str]]) -> bool:
    """May block ``b`` follow block ``a``? ``forbid`` holds [from, to] pairs of families or of layouts."""
    for src, dst in forbid:
        vocabulary = "family" if src in FAMILIES else "layout"
        if [_kind(a, "out", vocabulary), _kind(b, "in", vocabulary)] == [src, dst]:
            return False
    return True


def single_model(blocks: list[dict[str, Any]]) -> str | None:
    """The model id when ``blocks`` are one model's consecutive blocks (that zoo model re-headed), else None."""
    models = {b["model"] for b in blocks}
    if len(models) != 1 or any(a["end"] + 1 != b["start"] for a, b in zip(blocks, blocks[1:], strict=False)):
        return None
    return blocks[0]["model"]


def _single_model_chains(inst: Instance) -> list[list[dict[str, Any]]]:
    """Every assembly of the instance that is one model's blocks in order (one per stage, consecutive)."""
    out = []
    for m in sorted({b["model"] for b in inst.blocks}):
        per_stage = [[b for b in inst.blocks if b["model"] == m and b["stage"] == s] for s in range(inst.k)]
        out += [list(c) for c in itertools.product(*per_stage) if single_model(list(c))]
    return out


def _check_finite(inst: Instance) -> None:
    values = [(key(b), f, b[f]) for b in inst.blocks for f in ("params", "macs", "score")]
    values += [(k, f, v[f]) for d in (inst.pairs, inst.stem, inst.head) for k, v in d.items()
               for f in ("params", "macs")]
    bad = [(k, f, v) for k, f, v in values if not math.isfinite(float(v))]
    if bad:
        raise ValueError(f"non-finite coefficients reach the program: {bad[:3]}; fix the costs stage before solving.")


def _model(inst: Instance, max_params: float | None, max_macs: float | None, forbid: list[list[str]],
           objective: str, seed: int, keep_single: bool = False):
    from pyscipopt import Model, quicksum

    _check_finite(inst)
    m = Model("dery-reassembly")
    m.hideOutput()
    m.setParam("randomization/permutationseed", seed)
    m.setParam("randomization/randomseedshift", seed)
    x = {key(b): m.addVar(vtype="B", name=f"x[{key(b)}]") for b in inst.blocks}
    by_stage = {s: [b for b in inst.blocks if b["stage"] == s] for s in range(inst.k)}
    by_set = {j: [b for b in inst.blocks if b["set"] == j] for j in range(inst.k)}
    for s, bs in by_stage.items():
        m.addCons(quicksum(x[key(b)] for b in bs) == 1, name=f"stage[{s}]")
    for j, bs in by_set.items():
        m.addCons(quicksum(x[key(b)] for b in bs) == 1, name=f"set[{j}]")
    # Adapter pairs as a flow between consecutive stages: y[a, b] = x[a] * x[b], exact (and integral) because each
    # stage takes one block; two equalities per block instead of three inequalities per pair give a tighter LP.
    # A forbidden transition simply has no pair variable.
    y = {}
    for s in range(inst.k - 1):
        for a, b in itertools.product(by_stage[s], by_stage[s + 1]):
            if allowed(a, b, forbid):
                y[pair_key(a, b)] = m.addVar(vtype="C", lb=0.0, ub=1.0, name=f"y[{pair_key(a, b)}]")
        for a in by_stage[s]:
            m.addCons(quicksum(y[pair_key(a, b)] for b in by_stage[s + 1] if pair_key(a, b) in y) == x[key(a)])
        for b in by_stage[s + 1]:
            m.addCons(quicksum(y[pair_key(a, b)] for a in by_stage[s] if pair_key(a, b) in y) == x[key(b)])

    def cost(field: str):
        return (quicksum(b[field] * x[key(b)] for b in inst.blocks)
                + quicksum(inst.pairs[k][field] * v for k, v in y.items())
                + quicksum(inst.stem[key(b)][field] * x[key(b)] for b in by_stage[0])
                + quicksum(inst.head[key(b)][field] * x[key(b)] for b in by_stage[inst.k - 1]))

    if not keep_single:  # a zoo model re-headed is no reassembly: cut each such chain off
        for chain in _single_model_chains(inst):
            m.addCons(quicksum(x[key(b)] for b in chain) <= len(chain) - 1, name=f"not_only[{chain[0]['model']}]")
    if max_params is not None:
        m.addCons(cost("params") <= max_params, name="params_budget")
    if max_macs is not None:
        m.addCons(cost("macs") <= max_macs, name="macs_budget")
    if objective == "typicality":
        m.setObjective(quicksum(b["score"] * x[key(b)] for b in inst.blocks), "maximize")
    else:
        m.setObjective(cost(objective), "minimize")
    return m, x


def _assembly(inst: Instance, chosen: list[dict[str, Any]], surrogate: float) -> dict[str, Any]:
    params, macs = inst.totals(chosen)
    return {"blocks": [{f: b[f] for f in ("model", "stage", "start", "end", "set")} for b in chosen],
            "params": params, "macs": macs, "surrogate": surrogate, "single_model": single_model(chosen)}


def enumerate_assemblies(inst: Instance, max_params: float, max_macs: float, n: int,
                         forbid: list[list[str]] | None = None, seed: int = 0,
                         budget_name: str = "budget", method: str = "best_first",
                         keep_single: bool = False) -> list[dict[str, Any]]:
    """Up to ``n`` distinct feasible assemblies, best surrogate first. Raises BudgetError if none."""
    forbid = forbid or []
    _check_finite(inst)
    if method == "best_first":
        out = _best_first(inst, max_params, max_macs, n, forbid, keep_single)
    elif method == "scip":
        out = _scip_no_good(inst, max_params, max_macs, n, forbid, seed, keep_single)
    else:
        raise ValueError(f"unknown enumeration method {method!r}; use 'best_first' or 'scip'.")
    if not out:
        raise BudgetError(_infeasible_message(inst, max_params, max_macs, forbid, seed, budget_name, keep_single))
    return out


def _best_first(inst: Instance, max_params: float, max_macs: float, n: int,
                forbid: list[list[str]], keep_single: bool = False) -> list[dict[str, Any]]:
    k = inst.k
    stages = [sorted((b for b in inst.blocks if b["stage"] == s), key=key) for s in range(k)]
    # What the stages from s on can still add: at most the best scores, at least the cheapest block with its
    # cheapest incoming adapter (and head). Both bounds are admissible, so the walk is exact.
    best_rest, least = [0.0] * (k + 1), {f: [0] * (k + 1) for f in ("params", "macs")}
    for s in reversed(range(k)):
        best_rest[s] = best_rest[s + 1] + max(b["score"] for b in stages[s])
        for f in least:
            def need(b, f=f, s=s):   # f, s bound now (the min below calls it in this iteration)
                inc = min((inst.pairs[pair_key(a, b)][f] for a in stages[s - 1]), default=0) if s else 0
                return b[f] + inc + (inst.head[key(b)][f] if s == k - 1 else 0)
            least[f][s] = least[f][s + 1] + min(need(b) for b in stages[s])
    # entries: (-bound, indices, used sets, params, macs, score); indices break ties, so the order is deterministic
    heap: list[tuple] = [(-best_rest[0], (), 0, 0, 0, 0.0)]
    out = []
    while heap and len(out) < n:
        neg, idx, used, p, m, score = heapq.heappop(heap)
        s = len(idx)
        if s == k:
            chosen = [stages[t][i] for t, i in enumerate(idx)]
            if keep_single or not single_model(chosen):
                out.append(_assembly(inst, chosen, score))
            continue
        prev = stages[s - 1][idx[-1]] if s else None
        for i, b in enumerate(stages[s]):
            bit = 1 << b["set"]
            if used & bit or (prev is not None and not allowed(prev, b, forbid)):
                continue
            extra = inst.pairs[pair_key(prev, b)] if prev is not None else inst.stem[key(b)]
            bp, bm = p + b["params"] + extra["params"], m + b["macs"] + extra["macs"]
            if s == k - 1:
                bp, bm = bp + inst.head[key(b)]["params"], bm + inst.head[key(b)]["macs"]
            if bp + least["params"][s + 1] > max_params or bm + least["macs"][s + 1] > max_macs:
                continue
            sc = score + b["score"]
            heapq.heappush(heap, (-(sc + best_rest[s + 1]), idx + (i,), used | bit, bp, bm, sc))
    return out


def _solve(m, x, inst: Instance) -> dict[str, Any] | None:
    """One SCIP solve of a built program: the chosen assembly, or None when nothing is feasible."""
    m.optimize()
    if m.getNSols() == 0 or m.getStatus() == "infeasible":
        return None
    chosen = sorted((b for b in inst.blocks if m.getVal(x[key(b)]) > 0.5), key=lambda b: b["stage"])
    return _assembly(inst, chosen, m.getObjVal())


def _scip_no_good(inst: Instance, max_params: float, max_macs: float, n: int, forbid: list[list[str]],
                  seed: int, keep_single: bool = False) -> list[dict[str, Any]]:
    m, x = _model(inst, max_params, max_macs, forbid, "typicality", seed, keep_single)
    out = []
    while len(out) < n and (got := _solve(m, x, inst)) is not None:
        out.append(got)
        m.freeTransform()
        used = [x[key(b)] for b in got["blocks"]]
        m.addCons(sum(used) <= len(used) - 1)  # no-good cut
    return out


def solve_optimal(inst: Instance, max_params: float, max_macs: float, forbid: list[list[str]] | None = None,
                  seed: int = 0, keep_single: bool = False) -> dict[str, Any] | None:
    """The best assembly by the surrogate, from one SCIP solve (None if the budget admits none)."""
    return _solve(*_model(inst, max_params, max_macs, forbid or [], "typicality", seed, keep_single), inst)


def _infeasible_message(inst, max_params, max_macs, forbid, seed, budget_name, keep_single=False) -> str:
    parts = []
    for field, _other, _limit, unit in (("params", max_macs, max_params, "params"),
                                        ("macs", max_params, max_macs, "MACs")):
        for constrained in (True, False):
            m, _ = _model(inst, None if field == "params" else (max_params if constrained else None),
                          None if field == "macs" else (max_macs if constrained else None), forbid, field, seed,
                          keep_single)
            m.optimize()
            if m.getNSols():
                cond = " within the other limit" if constrained else " (ignoring the other limit)"
                parts.append(f"the smallest assembly needs {m.getObjVal() / 1e6:.3f}M {unit}{cond}")
                break
    if not parts:
        return (f"budget `{budget_name}` admits no assembly, and no assembly exists at any budget: the equivalence "
                f"sets and the transition rules {forbid} exclude every combination; relax `reassembly.forbid` or K.")
    return (f"budget `{budget_name}` (params <= {max_params / 1e6:.3f}M, MACs <= {max_macs / 1e6:.3f}M) admits no "
            f"assembly: {'; '.join(parts)}. Raise `params_m`/`macs_m` of this budget in your params file.")


def brute_force(inst: Instance, max_params: float, max_macs: float, forbid: list[list[str]] | None = None,
                keep_single: bool = False):
    """Every feasible assembly by exhaustive product (the test oracle for tiny instances)."""
    forbid = forbid or []
    by_stage = [[b for b in inst.blocks if b["stage"] == s] for s in range(inst.k)]
    for combo in itertools.product(*by_stage):
        if len({b["set"] for b in combo}) != inst.k or (not keep_single and single_model(list(combo))):
            continue
        if not all(allowed(a, b, forbid) for a, b in zip(combo, combo[1:], strict=False)):
            continue
        p, m = inst.totals(list(combo))
        if p <= max_params and m <= max_macs:
            yield list(combo), p, m, sum(b["score"] for b in combo)


def instance_from_costs(costs: dict[str, Any]) -> Instance:
    return Instance(costs["blocks"], costs["pairs"], costs["stem"], costs["head"], costs["k"])


def compute_costs(partition: dict[str, Any], infos: dict[str, Any], num_classes: int, stem: str,
                  image_size: int = 32) -> dict[str, Any]:
    """Params and MACs of every block (at its native input), stem, head and adapter pair."""
    from . import features as F
    from . import stitching as S

    k = len(partition["sets"])
    blocks = []
    for b in partition["blocks"]:
        info = infos[b["model"]]
        seg = F.Segment(info.model, info.trace, b["start"] - 1, b["end"] - 1)
        src, dst = info.port_in(b["start"], 0), info.port_out(b["end"])
        blocks.append(dict(model=b["model"], stage=b["stage"], start=b["start"], end=b["end"], set=b["set"],
                           score=b["anchor_similarity"], params=count_params(seg),
                           macs=count_macs(seg, *info.meta["out_shapes"][b["start"] - 1]),
                           fmt_in=src.fmt, fmt_out=dst.fmt,
                           fam_in=info.meta["family"][b["start"]], fam_out=info.meta["family"][b["end"]]))
    stems, heads, pairs = {}, {}, {}
    for b in blocks:
        info = infos[b["model"]]
        if b["stage"] == 0:
            mod = F.OwnStem(info.model, info.trace) if stem == "own" else S.FreshStem(info.port_in(1, 0), image_size)
            stems[key(b)] = {"params": count_params(mod), "macs": count_macs(mod, 3, image_size, image_size)}
        if b["stage"] == k - 1:
            head = S.Head(info.port_out(b["end"]), num_classes)
            heads[key(b)] = {"params": count_params(head), "macs": count_macs(head, *info.meta["out_shapes"][b["end"]])}
    for a, b in itertools.product(blocks, blocks):
        if b["stage"] != a["stage"] + 1:
            continue
        if a["model"] == b["model"] and a["end"] + 1 == b["start"]:
            pairs[pair_key(a, b)] = {"params": 0, "macs": 0}
            continue
        src = infos[a["model"]].port_out(a["end"])
        st = S.Stitch(src, infos[b["model"]].port_in(b["start"], 0))
        pairs[pair_key(a, b)] = {"params": count_params(st),
                                 "macs": count_macs(st, *infos[a["model"]].meta["out_shapes"][a["end"]])}
    return {"k": k, "blocks": blocks, "pairs": pairs, "stem": stems, "head": heads,
            "convention": "MACs = torch.utils.flop_counter FLOPs / 2; params include stem, adapters and head"}
