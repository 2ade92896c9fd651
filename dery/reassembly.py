"""Reassembly under budgets: block costs and the 0-1 program on SCIP (paper Eqs. 8-11).

Variables: x_b = 1 if block b is used; the block's position in the assembly is its stage
index. Constraints: exactly one block per equivalence set and one per stage position;
parameter and MAC budgets, counting blocks at their native input size, the stem, the head
and the adapter between each consecutive pair (linearised with pair variables y);
forbidden format transitions (the paper allows CNN -> Transformer only).

Cost convention: MACs (one multiply-accumulate = 1), as the paper's budgets (mmcv counts
MACs). ``torch.utils.flop_counter`` counts 2 FLOPs per MAC, so we halve its total.

The paper's objective (the proxy score of the whole network) is not linear, so as the paper
we use the program to *enumerate* feasible assemblies and rank them with the proxy after.
The enumeration order comes from a linear surrogate: the blocks' summed similarity to their
set's anchor (most typical blocks first). No-good cuts make each solution distinct.
"""
from __future__ import annotations

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
        for a, b in zip(chosen, chosen[1:]):
            p, m = p + self.pairs[pair_key(a, b)]["params"], m + self.pairs[pair_key(a, b)]["macs"]
        return p, m


def allowed(a: dict[str, Any], b: dict[str, Any], forbid: list[list[str]]) -> bool:
    kind = lambda fmt: "tokens" if fmt == "NLC" else "maps"  # noqa: E731
    return [kind(a["fmt_out"]), kind(b["fmt_in"])] not in forbid


def _check_finite(inst: Instance) -> None:
    values = [(key(b), f, b[f]) for b in inst.blocks for f in ("params", "macs", "score")]
    values += [(k, f, v[f]) for d in (inst.pairs, inst.stem, inst.head) for k, v in d.items() for f in ("params", "macs")]
    bad = [(k, f, v) for k, f, v in values if not math.isfinite(float(v))]
    if bad:
        raise ValueError(f"non-finite coefficients reach the program: {bad[:3]}; fix the costs stage before solving.")


def _model(inst: Instance, max_params: float | None, max_macs: float | None, forbid: list[list[str]],
           objective: str, seed: int):
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
    y = {}
    for s in range(inst.k - 1):
        for a, b in itertools.product(by_stage[s], by_stage[s + 1]):
            if not allowed(a, b, forbid):
                m.addCons(x[key(a)] + x[key(b)] <= 1)
                continue
            v = m.addVar(vtype="B", name=f"y[{pair_key(a, b)}]")
            m.addCons(v >= x[key(a)] + x[key(b)] - 1)
            m.addCons(v <= x[key(a)])
            m.addCons(v <= x[key(b)])
            y[pair_key(a, b)] = v

    def cost(field: str):
        return (quicksum(b[field] * x[key(b)] for b in inst.blocks)
                + quicksum(inst.pairs[k][field] * v for k, v in y.items())
                + quicksum(inst.stem[key(b)][field] * x[key(b)] for b in by_stage[0])
                + quicksum(inst.head[key(b)][field] * x[key(b)] for b in by_stage[inst.k - 1]))

    if max_params is not None:
        m.addCons(cost("params") <= max_params, name="params_budget")
    if max_macs is not None:
        m.addCons(cost("macs") <= max_macs, name="macs_budget")
    if objective == "typicality":
        m.setObjective(quicksum(b["score"] * x[key(b)] for b in inst.blocks), "maximize")
    else:
        m.setObjective(cost(objective), "minimize")
    return m, x


def enumerate_assemblies(inst: Instance, max_params: float, max_macs: float, n: int,
                         forbid: list[list[str]] | None = None, seed: int = 0,
                         budget_name: str = "budget") -> list[dict[str, Any]]:
    """Up to ``n`` distinct feasible assemblies, best surrogate first. Raises BudgetError if none."""
    forbid = forbid or []
    m, x = _model(inst, max_params, max_macs, forbid, "typicality", seed)
    out = []
    while len(out) < n:
        m.optimize()
        if m.getNSols() == 0 or m.getStatus() == "infeasible":
            break
        chosen = sorted((b for b in inst.blocks if m.getVal(x[key(b)]) > 0.5), key=lambda b: b["stage"])
        params, macs = inst.totals(chosen)
        out.append({"blocks": [{f: b[f] for f in ("model", "stage", "start", "end", "set")} for b in chosen],
                    "params": params, "macs": macs, "surrogate": m.getObjVal()})
        m.freeTransform()
        m.addCons(sum(x[key(b)] for b in chosen) <= len(chosen) - 1)  # no-good cut
    if not out:
        raise BudgetError(_infeasible_message(inst, max_params, max_macs, forbid, seed, budget_name))
    return out


def _infeasible_message(inst, max_params, max_macs, forbid, seed, budget_name) -> str:
    parts = []
    for field, other, limit, unit in (("params", max_macs, max_params, "params"), ("macs", max_params, max_macs, "MACs")):
        for constrained in (True, False):
            m, _ = _model(inst, None if field == "params" else (max_params if constrained else None),
                          None if field == "macs" else (max_macs if constrained else None), forbid, field, seed)
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


def brute_force(inst: Instance, max_params: float, max_macs: float, forbid: list[list[str]] | None = None):
    """Every feasible assembly by exhaustive product (the test oracle for tiny instances)."""
    forbid = forbid or []
    by_stage = [[b for b in inst.blocks if b["stage"] == s] for s in range(inst.k)]
    for combo in itertools.product(*by_stage):
        if len({b["set"] for b in combo}) != inst.k:
            continue
        if not all(allowed(a, b, forbid) for a, b in zip(combo, combo[1:])):
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
                           fmt_in=src.fmt, fmt_out=dst.fmt))
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
