# Helpers of the bench target (workflow/rules/bench.smk): its params and which files its jobs read and write.
BENCH = config["bench"]
BENCH_SEEDS = [SEED0 + i for i in range(BENCH["seeds"])]
BENCH_FT = {**finetune_cfg(), "epochs": BENCH["epochs"]}
BENCH_STITCH = {**config["stitching"], "train_steps": BENCH["stitching"]["train_steps"]}


def bench_sample_file(budget):
    # a plain str: Snakemake's file object holds its rule, which a script job's params cannot pickle
    return str(checkpoints.bench_sample.get(budget=budget).output[0])


def bench_manifest(wildcards=None):
    """Every bench result file, read off each budget's sample (known once its checkpoint ran)."""
    import json

    from dery import bench as BN

    assembly, scratch = {}, {}
    for b in BUDGETS:
        doc = json.loads(Path(bench_sample_file(b)).read_text())
        slots = list(range(len(doc["candidates"])))
        compared = BN.spread(slots, BENCH["stitching"]["assemblies"])
        runs = lambda s, p, v: {  # noqa: E731
            sd: f"results/bench/finetune/{b}/slot{s}_{p}_{v}_seed{sd}.metrics.json"
            for sd in BENCH_SEEDS
        }
        # lstsq, the pipeline's adapters, is always benchmarked; other variants on the compared slots, FT only
        variants = ["lstsq"] + [
            v for v in BENCH["stitching"]["variants"] if v != "lstsq"
        ]
        assembly[b] = {
            s: {
                p: {
                    v: runs(s, p, v)
                    for v in variants
                    if v == "lstsq" or (p == "FT" and s in compared)
                }
                for p in BENCH["protocols"]
            }
            for s in slots
        }
        ids = [c["id"] for c in doc["candidates"]]
        scores = {c["id"]: c["bench_scores"] for c in doc["candidates"]}
        picked = {i for i in BN.picks(scores, doc["proxies"]).values() if i is not None}
        scratch[b] = {
            ids.index(i): {
                sd: f"results/bench/finetune/{b}/scratch_slot{ids.index(i)}_seed{sd}.metrics.json"
                for sd in BENCH_SEEDS
            }
            for i in sorted(picked)
        }
    zoo = {
        m: {
            sd: f"results/bench/finetune/zoo/{m}_seed{sd}.metrics.json"
            for sd in BENCH_SEEDS
        }
        for m in MODELS
    }
    return {"assembly": assembly, "scratch": scratch, "zoo": zoo}


def bench_inputs(wildcards):
    return {
        "runs": sorted(set(_leaves(bench_manifest()))),  # _leaves: claims_common.smk
        "samples": [bench_sample_file(b) for b in BUDGETS],
    }
