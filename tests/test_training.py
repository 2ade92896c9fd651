"""Fine-tuning protocols: FZ leaves pretrained blocks untouched, FT trains them; both are seeded."""
import pytest
import torch
from torch import nn

from dery import training as TR
from dery.training import accuracy, fit


def toy(seed=0):
    torch.manual_seed(seed)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    return nn.Sequential(block, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)), block


def data(n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long()


KW = dict(epochs=2, batch_size=8, lr=1e-2, weight_decay=0.0, label_smoothing=0.0, warmup_epochs=0.5, seed=3)


def test_frozen_blocks_keep_weights_and_batchnorm_statistics():
    model, block = toy()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    x, y = data()
    hist = fit(model, x, y, x[:10], y[:10], frozen=[block], **KW)
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert hist.trainable_params == 4 * 2 + 2


def test_fz_freezes_an_own_pretrained_stem_and_trains_a_fresh_one():
    """FZ freezes what is pretrained: the blocks, and with ``stem: own`` the model's own stem (weights and BatchNorm
    statistics, in eval mode); a fresh random stem trains with the head, as in the paper."""
    import timm

    from dery.stitching import build, dissect

    torch.manual_seed(0)
    info = dissect(timm.create_model("resnet10t", num_classes=5).eval(), torch.randn(16, 3, 32, 32))
    spec = {"blocks": [{"model": "m", "start": 1, "end": 2}]}
    x, y = data(16)
    for stem in ("own", "fresh"):
        asm, _ = build(spec, {"m": info}, num_classes=2, stem=stem, adapter_init="random", seed=0)
        frozen = asm.pretrained_modules()
        assert (asm.stem in frozen) == (stem == "own") and all(b in frozen for b in asm.blocks)
        before = {k: v.clone() for k, v in asm.state_dict().items()}
        hist = fit(asm, x, y, x[:8], y[:8], frozen=frozen, **{**KW, "epochs": 1})
        stem_changed = [not torch.equal(v, before["stem." + k]) for k, v in asm.stem.state_dict().items()]
        assert all(torch.equal(v, before["blocks." + k]) for k, v in asm.blocks.state_dict().items())
        trained = sum(p.numel() for p in asm.head.parameters())
        if stem == "own":
            assert not any(p.requires_grad for p in asm.stem.parameters()) and not any(stem_changed)
        else:
            trained += sum(p.numel() for p in asm.stem.parameters())
            assert all(p.requires_grad for p in asm.stem.parameters()) and all(stem_changed)
        assert hist.trainable_params == trained


def test_full_tuning_changes_the_blocks():
    model, block = toy()
    before = block[0].weight.clone()
    x, y = data()
    fit(model, x, y, x[:10], y[:10], **KW)
    assert not torch.equal(block[0].weight, before)


def test_same_seed_same_weights_and_accuracy():
    x, y = data()
    runs = []
    for _ in range(2):
        model, _ = toy()
        hist = fit(model, x, y, x[:10], y[:10], **KW)
        runs.append((model[-1].weight.detach().clone(), hist.best_val, accuracy(model, x, y)))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]


def test_non_finite_loss_stops_with_the_step():
    import pytest

    model, _ = toy()
    x, y = data()
    with pytest.raises(FloatingPointError, match="epoch 1, step 1"):
        fit(model, x * float("nan"), y, x[:10], y[:10], **KW)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import pytest

    from dery import training

    x, y = data()
    ref, _ = toy()
    fit(ref, x, y, x[:10], y[:10], **{**KW, "epochs": 3})

    model, _ = toy()
    resume = tmp_path / "job.resume.pt"
    calls = {"n": 0}
    real_accuracy = training.accuracy

    def dying_accuracy(*a, **k):  # the job dies in its third epoch, after epoch 2 was saved
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_accuracy(*a, **k)

    monkeypatch.setattr(training, "accuracy", dying_accuracy)
    with pytest.raises(KeyboardInterrupt):
        fit(model, x, y, x[:10], y[:10], resume=resume, **{**KW, "epochs": 3})
    assert resume.exists()
    monkeypatch.setattr(training, "accuracy", real_accuracy)
    fresh, _ = toy(seed=99)  # a new process: different initial weights, restored from the file
    hist = fit(fresh, x, y, x[:10], y[:10], resume=resume, **{**KW, "epochs": 3})
    assert not resume.exists() and len(hist.epochs) == 3
    for a, b in zip(ref.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_resume_file_with_a_pickled_payload_is_refused(tmp_path):
    import pickle

    import pytest

    from dery.training import load_state

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.resume.pt"
    bad.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(RuntimeError, match="unreadable or unsafe"):
        load_state(bad)


def test_the_schedule_is_timms_cosine_after_a_linear_warm_up_that_peaks_one_step_earlier():
    from timm.scheduler import CosineLRScheduler

    lr, warm, total = 1e-3, 5, 40
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    timm_sched = CosineLRScheduler(opt, t_initial=total - warm, warmup_t=warm, warmup_lr_init=lr / warm,
                                   warmup_prefix=True, t_in_epochs=False)
    ours = [lr * TR.lr_factor(s, warm, total) for s in range(total)]
    theirs = [timm_sched._get_lr(s)[0] for s in range(total)]
    assert ours[warm:] == pytest.approx(theirs[warm:], rel=1e-12, abs=1e-18)  # the cosine: the same
    assert ours[:warm] == pytest.approx([lr * (s + 1) / warm for s in range(warm)])  # ours peaks at step warm-1
    assert theirs[warm - 1] < lr and ours[warm - 1] == pytest.approx(lr)            # timm's one step later
    assert ours[-1] > 0 and TR.lr_factor(total, warm, total) == pytest.approx(0.0)


@pytest.mark.parametrize("arch", ["resnet10t", "vit_tiny_patch16_224"])
def test_decay_groups_are_timms_except_the_models_no_weight_decay_list(arch):
    import timm
    from timm.optim import param_groups_weight_decay

    model = timm.create_model(arch, num_classes=10, **({"img_size": 32, "patch_size": 8, "depth": 2}
                                                         if arch.startswith("vit") else {}))
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)] for p in TR.decay_groups(list(model.parameters()), 0.05)[1]["params"]}
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=skip)
    theirs = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert ours <= theirs
    if arch == "resnet10t":
        assert ours == theirs
    else:
        assert theirs - ours == {"pos_embed", "cls_token"}
