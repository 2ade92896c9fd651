"""Adapters for every family pair, least-squares initialisation, and whole assemblies."""
import numpy as np
import pytest
import torch
from torch import nn

from dery.stitching import Assembly, FreshStem, Head, Port, Stitch

PORTS = {
    "cnn": (Port("NCHW", 16, (8, 8)), lambda b: torch.randn(b, 16, 8, 8)),
    "vit": (Port("NLC", 24, (4, 4), prefix=1), lambda b: torch.randn(b, 17, 24)),
    "swin": (Port("NHWC", 12, (2, 2)), lambda b: torch.randn(b, 2, 2, 12)),
}
DST = {"cnn": (Port("NCHW", 32, (4, 4)), (32, 4, 4)), "vit": (Port("NLC", 20, (8, 8)), (64, 20)),
       "swin": (Port("NHWC", 8, (4, 4)), (4, 4, 8))}


@pytest.mark.parametrize("src", PORTS)
@pytest.mark.parametrize("dst", DST)
def test_adapter_joins_every_family_pair(src, dst):
    port, make = PORTS[src]
    st = Stitch(port, DST[dst][0])
    x = make(3).requires_grad_()
    y = st(x)
    assert tuple(y.shape[1:]) == DST[dst][1]
    y.square().mean().backward()
    assert x.grad is not None and st.proj.weight.grad is not None


def test_spatial_matching_is_deterministic():
    st = Stitch(Port("NCHW", 4, (8, 8)), Port("NCHW", 4, (2, 2)))
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(st(x), st(x))


def test_least_squares_init_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    w, b = rng.normal(size=(6, 5)), rng.normal(size=5)
    st = Stitch(Port("NCHW", 6, (1, 1)), Port("NCHW", 5, (1, 1)))
    r2 = st.init_least_squares(x, x @ w + b, ridge=1e-9)
    assert r2 == pytest.approx(1.0, abs=1e-6)
    out = st(torch.tensor(x, dtype=torch.float32).view(400, 6, 1, 1)).view(400, 5).detach().numpy()
    np.testing.assert_allclose(out, x @ w + b, atol=1e-4)


def test_fresh_stem_is_the_papers_7x7_stride_2_conv_bn_relu_maxpool():
    stem = FreshStem(Port("NCHW", 16, (8, 8)), in_chans=1)
    conv, bn, relu, pool = stem.body
    assert type(conv) is nn.Conv2d and conv.bias is None
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (1, 16, (7, 7),
                                                                                                  (2, 2), (3, 3))
    assert type(bn) is nn.BatchNorm2d and bn.num_features == 16 and type(relu) is nn.ReLU
    assert type(pool) is nn.MaxPool2d and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert stem.body(torch.randn(2, 1, 32, 32)).shape == (2, 16, 8, 8)  # a quarter of the side, as 224 -> 56


@pytest.mark.parametrize("dst,shape,expect", [
    (Port("NCHW", 16, (8, 8)), (16, 8, 8), lambda m: m),  # the stem's own grid: no resize
    (Port("NCHW", 16, (4, 4)), (16, 4, 4), lambda m: nn.functional.avg_pool2d(m, 2)),  # coarser: average pooling
    (Port("NCHW", 16, (16, 16)), (16, 16, 16), lambda m: m.repeat_interleave(2, 2).repeat_interleave(2, 3)),
    (Port("NLC", 24, (4, 4)), (16, 24), lambda m: nn.functional.avg_pool2d(m, 2).flatten(2).transpose(1, 2)),
    (Port("NHWC", 12, (8, 8)), (8, 8, 12), lambda m: m.permute(0, 2, 3, 1)),  # Swin
], ids=["cnn", "cnn-coarser", "cnn-finer", "vit-tokens", "swin"])
def test_fresh_stem_meets_the_first_blocks_channels_grid_and_format(dst, shape, expect):
    """C = the first block's input channels; then (our addition) a deterministic resize to its native grid
    (average pooling down, nearest up) and its format, as an adapter does. ViT tokens get no CLS token."""
    stem = FreshStem(dst).eval()
    x = torch.randn(2, 3, 32, 32)
    y = stem(x)
    assert tuple(y.shape) == (2, *shape) and stem.body[0].out_channels == dst.channels
    torch.testing.assert_close(y, expect(stem.body(x)))


def test_assembly_cnn_then_tokens_trains_end_to_end():
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU())
    vit_block = torch.nn.TransformerEncoderLayer(24, 2, 48, batch_first=True)
    stem = FreshStem(Port("NCHW", 8, (8, 8)))
    asm = Assembly(stem, [cnn, vit_block], [Stitch(Port("NCHW", 16, (8, 8)), Port("NLC", 24, (4, 4)))],
                   Head(Port("NLC", 24, (4, 4)), 10))
    logits = asm(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in asm.parameters() if p.requires_grad)


def test_assemblies_of_real_timm_blocks_across_downsampling_glue_build_and_train():
    """A block that starts right after ConvNeXt's downsampling takes the previous node's output."""
    import timm

    from dery.stitching import build, dissect

    torch.manual_seed(0)
    probe = torch.randn(64, 3, 32, 32)
    infos = {"cnx": dissect(timm.create_model("convnext_atto", num_classes=5).eval(), probe),
             "res": dissect(timm.create_model("resnet10t", num_classes=5).eval(), probe),
             "vit": dissect(timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8,
                                                 depth=3, embed_dim=32, num_heads=2).eval(), probe)}
    names = infos["cnx"].meta["names"]
    start = names.index("stages.1.blocks.0")  # 1-based node index (names[0] is the stem)
    spec = {"blocks": [{"model": "res", "start": 1, "end": 2}, {"model": "cnx", "start": start, "end": start + 1},
                       {"model": "vit", "start": 2, "end": 3}]}
    for init in ("lstsq", "random"):
        asm, notes = build(spec, infos, num_classes=10, stem="own", adapter_init=init, seed=0)
        logits = asm(torch.randn(2, 3, 32, 32))
        assert logits.shape == (2, 10)
        logits.sum().backward()
        if init == "lstsq":
            assert len(notes["adapter_r2"]) == 2 and all(r2 <= 1 for r2 in notes["adapter_r2"])


def test_consecutive_blocks_of_one_model_reproduce_that_model():
    import timm

    from dery.stitching import build, dissect

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=5).eval()
    info = dissect(model, torch.randn(16, 3, 32, 32))
    n = len(info.meta["names"]) - 1
    spec = {"blocks": [{"model": "m", "start": 1, "end": 5}, {"model": "m", "start": 6, "end": n}]}
    asm, _ = build(spec, {"m": info}, num_classes=5, stem="own", adapter_init="random", seed=0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(asm.forward_features(x), model.forward_features(x))
