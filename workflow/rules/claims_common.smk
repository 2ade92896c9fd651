# Helpers of the claims target (workflow/rules/claims.smk): which files its jobs read and write.
import re

CLAIMS = config["claims"]
SEED0 = config["seed"]
CLAIM_PROTOCOL = CLAIMS["protocol"]
CLAIM_SEEDS = [SEED0 + i for i in range(CLAIMS["seeds"])]
TAU_SEEDS = [SEED0 + i for i in range(CLAIMS["tau_seeds"])]
TAU_SLOTS = list(range(CLAIMS["assemblies_per_budget"]))
DRAWS = list(range(CLAIMS["random_draws"]))
# Each draw of a random arm (e) is fine-tuned with its own seed, outside every seed of the pick and the tau study:
# a draw that lands on the pick's network is then an independent run of it, not a copy of one of the pick's runs.
# The offset does not move with claims.seeds/tau_seeds, so changing those reruns no arm job.
ARM_SEED0 = SEED0 + max(1000, CLAIMS["seeds"], CLAIMS["tau_seeds"])


def arm_seed(draw):
    return ARM_SEED0 + draw


def claims_finetune_file(arm, budget, slot, seed):
    """Slot 0 of the tau study is rank 0: with the base seed it is the main run's own job."""
    if arm == "tau" and slot == 0 and seed == SEED0 and CLAIM_PROTOCOL in PROTOCOLS:
        return f"results/finetune/{budget}/rank0_{CLAIM_PROTOCOL}.metrics.json"
    return f"results/claims/finetune/{arm}/{budget}/slot{slot}_{CLAIM_PROTOCOL}_seed{seed}.metrics.json"


def claims_scratch_file(budget, seed):
    if seed == SEED0 and config["finetune"]["scratch_baseline"]:
        return f"results/finetune/{budget}/scratch_FT.metrics.json"
    return f"results/claims/finetune/scratch/{budget}/seed{seed}.metrics.json"


def claims_zoo_file(model, seed):
    if seed == SEED0 and config["finetune"]["zoo_baselines"]:
        return f"results/finetune/zoo/{model}_FT.metrics.json"
    return f"results/claims/finetune/zoo/{model}_seed{seed}.metrics.json"


def claims_manifest():
    tau = {
        b: {
            s: {
                sd: claims_finetune_file("tau", b, s, sd)
                for sd in (CLAIM_SEEDS if s == 0 else []) + TAU_SEEDS
            }
            for s in TAU_SLOTS
        }
        for b in BUDGETS
    }
    arms = {
        name: {
            b: {
                d: claims_finetune_file(f"{prefix}{d}", b, 0, arm_seed(d))
                for d in DRAWS
            }
            for b in BUDGETS
        }
        for name, prefix in (
            ("cuts", "cuts"),
            ("rand_cover", "randcover"),
            ("rand_cuts", "randcuts"),
        )
    }
    return {
        "tau": tau,
        "scratch": {
            b: {sd: claims_scratch_file(b, sd) for sd in CLAIM_SEEDS} for b in BUDGETS
        },
        "zoo": {m: {sd: claims_zoo_file(m, sd) for sd in CLAIM_SEEDS} for m in MODELS},
        "arms": arms,
    }


def _leaves(x):
    return [f for v in x.values() for f in _leaves(v)] if isinstance(x, dict) else [x]


def claims_inputs():
    """Every metrics file of the manifest, plus the spec (.json) beside each assembly's metrics."""
    m = claims_manifest()
    files = _leaves(m)
    with_spec = _leaves(m["tau"]) + _leaves(m["arms"])
    files += [f[: -len(".metrics.json")] + ".json" for f in with_spec]
    return sorted(set(files))


def claims_ranking(wildcards):
    arm = wildcards.arm
    if arm == "tau":
        return f"results/proxy/{wildcards.budget}/ranking.json"
    if arm.startswith("cuts"):
        return f"results/claims/random/{arm}/{wildcards.budget}/ranking.json"
    space, draw = re.fullmatch(r"rand(cover|cuts)([0-9]+)", arm).groups()
    return (
        f"results/claims/random/{space}{draw}/{wildcards.budget}/random_assembly.json"
    )


def claims_costs(wildcards):
    if wildcards.space == "cover":
        return "results/partition/block_costs.json"
    return f"results/claims/random/cuts{wildcards.draw}/block_costs.json"
