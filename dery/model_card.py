"""The model card of a saved assembly (``X.card.md`` beside its spec): use, provenance of every block with its
licence, data, numbers and files, written from the spec alone."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{100 * float(v):.2f}%"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def model_card(spec: dict[str, Any]) -> str:
    """Markdown: use, provenance of every block with its licence, data, numbers, files."""
    name = Path(spec["weights"]["file"]).with_suffix(".json").name
    src = spec["sources"]
    lines = [f"# dery assembly `{spec.get('id', '?')}`: budget `{spec.get('budget', '?')}`, rank "
             f"{spec.get('rank', '?')}, protocol {spec.get('protocol', '?')}", "",
             f"A network reassembled by dery {spec['software']['dery']} (Deep Model Reassembly, Yang et al., NeurIPS "
             f"2022) from {len(spec['blocks'])} pretrained blocks of {len(src)} source model(s), joined by 1x1-conv "
             f"adapters, then fine-tuned "
             + (("with the pretrained blocks frozen (FZ: adapters and head trained; the first block's own stem "
                 "frozen too)."
                 if spec.get("stem") == "own" else
                 "with the pretrained blocks frozen (FZ: the fresh stem, adapters and head trained).")
                if spec.get("protocol") == "FZ"
                else "with every weight trained (FT)."), "",
             "## Use", "", "```python", "import dery",
             f'model = dery.load_assembly("{name}")  # torch.nn.Module, eval mode',
             'logits = model(dery.preprocess("image.png", model.dery_spec))',
             'print(model.dery_spec["classes"][logits.argmax(1).item()])', "```", "",
             f"Input: {spec['input']['dtype']} [N, {spec['input']['channels']}, {spec['input']['height']}, "
             f"{spec['input']['width']}] ({spec['input']['steps']}; mean {spec['input']['mean']}, std "
             f"{spec['input']['std']}) from {spec['input']['raw']['height']}x{spec['input']['raw']['width']} "
             f"{spec['input']['raw']['mode']} images. Output: logits over {len(spec['classes'])} classes: "
             + ", ".join(spec["classes"]) + ".", "",
             "## Where each part came from", "",
             "| part | source model | timm architecture | nodes | pretrained on | licence | weights sha256 |",
             "|---|---|---|---|---|---|---|"]
    first = spec["stem_module"]
    stem_from = (f"own stem of `{first['model']}`" if first["mode"] == "own" else "fresh (random init, trained here)")
    lines.append(f"| stem | {first['model'] if first['mode'] == 'own' else '-'} | "
                 f"{src[first['model']]['arch'] if first['mode'] == 'own' else '-'} | {stem_from} | "
                 f"{_pretrained(src[first['model']]) if first['mode'] == 'own' else '-'} | "
                 f"{src[first['model']]['license'] if first['mode'] == 'own' else '-'} | `{first['sha256'][:12]}` |")
    for i, b in enumerate(spec["blocks"]):
        s = src[b["model"]]
        if i:
            a = spec["adapters"][i - 1]
            desc = ("identity (consecutive blocks of one model)" if a["kind"] == "identity" else
                    f"1x1 conv {a['from']['fmt']} {a['from']['channels']}ch {a['from']['grid']} -> {a['to']['fmt']} "
                    f"{a['to']['channels']}ch {a['to']['grid']} ({spec['adapter_init']} init)")
            lines.append(f"| adapter {i} | - | - | {desc} | - | - | `{a['sha256'][:12]}` |")
        lines.append(f"| block {i + 1} | {b['model']} | {s['arch']}"
                     f"{' ' + json.dumps(s['kwargs']) if s['kwargs'] else ''} | "
                     f"{b['start']}-{b['end']}: {', '.join(b['nodes'])} | {_pretrained(s)} | {s['license']} | "
                     f"`{b['sha256'][:12]}` |")
    h = spec["head"]
    lines += [f"| head | - | - | global average pool + linear {h['from']['channels']} -> {h['num_classes']} | - | - | "
              f"`{h['sha256'][:12]}` |", ""]
    for m, s in src.items():
        if s.get("checkpoint_sha256"):
            lines.append(f"- `{m}`: checkpoint sha256 `{s['checkpoint_sha256']}`")
    data = spec.get("data") or {}
    lines += ["", "## Data", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in data.items()] or ["- not recorded"]
    lines += ["", "## Numbers", "", "| params | MACs (32x32) | proxy score | val acc | test acc | trainable params |",
              "|---|---|---|---|---|---|",
              f"| {_fmt(spec.get('params'))} | {_fmt(spec.get('macs'))} | {_fmt(spec.get('proxy_score'))} "
              f"({spec.get('proxy', 'proxy')}) | {_fmt(spec.get('val_acc'), True)} | "
              f"{_fmt(spec.get('test_acc'), True)} | "
              f"{_fmt(spec.get('trainable_params'))} |", "",
              "MACs count one multiply-accumulate as 1; params include stem, adapters and head.", "",
              "## Files", "", "| file | sha256 | check |", "|---|---|---|",
              f"| {spec['weights']['file']} | `{spec['weights']['sha256']}` | verified by `dery.load_assembly` |"]
    for kind, e in (spec.get("exports") or {}).items():
        if "error" in e:
            lines.append(f"| (no {kind} file) | | export failed: {e['error']} |")
            continue
        lines.append(f"| {e['file']} | `{e['sha256']}` | {kind}: max abs logit diff {e['max_abs_diff']:.2e} vs PyTorch "
                     f"on {len((spec.get('reference') or {}).get('logits', []))} test images |")
    lines += ["", "## Limitations", "",
              "Fine-tuned and tested on Fashion-MNIST-style images only (28x28 grayscale, white object on black, "
              "padded to 32x32); other images are out of distribution. Accuracies come from one seeded run.", "",
              f"Built with {', '.join(f'{k} {v}' for k, v in spec['software'].items())}; spec format "
              f"{spec['format']} v{spec['format_version']}.", ""]
    return "\n".join(lines)


def _pretrained(s: dict[str, Any]) -> str:
    origin = s.get("pretrained_from")
    classes = s.get("source_classes")
    where = f"source {s.get('source')}" + (f" (Fashion-MNIST classes {classes})" if classes else "")
    return where if origin in (None, "trained here") else f"{where}, from {origin}"
