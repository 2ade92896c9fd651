"""Generic block-level dissection of timm families, checked against the models' own forward passes."""
import pytest
import timm
import torch

from dery import features as F

SWIN = dict(img_size=32, window_size=4, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))
FAMILIES = {
    "resnet18": ({}, ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]),
    "vit_tiny_patch16_224": (dict(img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2),
                             ["blocks.0", "blocks.1", "blocks.2"]),
    "regnetx_002": ({}, None),
    "mobilenetv3_small_050": ({}, None),
    "convnext_atto": ({}, None),
    "swin_tiny_patch4_window7_224": (SWIN, ["layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0",
                                            "layers.1.blocks.1", "layers.2.blocks.0", "layers.2.blocks.1",
                                            "layers.3.blocks.0", "layers.3.blocks.1"]),
}


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32)


@pytest.mark.parametrize("arch", FAMILIES)
def test_nodes_are_residual_blocks_that_rebuild_the_model(arch, x):
    kwargs, expected = FAMILIES[arch]
    model = timm.create_model(arch, num_classes=5, **kwargs).eval()
    tr = F.trace(model, x[:2])
    if expected:
        assert tr.nodes == expected
    else:
        assert len(tr.nodes) >= 8, "block-level, not stage-level nodes"
    F.verify_chain(model, tr, x)  # stem + glue + nodes reproduce every node output
    mods = dict(model.named_modules())
    assert not any(n in mods and isinstance(mods[n], (torch.nn.Linear,)) for n in tr.nodes)


def test_regnet_single_block_stages_are_expanded():
    model = timm.create_model("regnetx_002", num_classes=5)
    nodes = F.node_names(model)
    assert nodes[:2] == ["s1.b1", "s2.b1"] and nodes[-1].startswith("s4.")


def test_glue_between_stages_belongs_to_the_next_block(x):
    model = timm.create_model("convnext_atto", num_classes=5).eval()
    tr = F.trace(model, x[:2])
    j = tr.nodes.index("stages.1.blocks.0")
    assert tr.glue[j] == ["stages.1.downsample"]


def test_own_stem_stops_at_the_first_node_and_drops_the_rest(x):
    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8, depth=3,
                              embed_dim=32, num_heads=2).eval()
    tr = F.trace(model, x[:2])
    stem = F.OwnStem(model, tr).eval()
    seen = {}
    h = model.blocks[0].register_forward_pre_hook(lambda m, i: seen.setdefault("in", i[0]))
    with torch.no_grad():
        model(x)
        out = stem(x)
    h.remove()
    torch.testing.assert_close(out, seen["in"])
    assert out.shape == (4, 1 + 16, 32)  # CLS + 4x4 patches
    n_stem = sum(p.numel() for p in stem.parameters())
    n_front = sum(p.numel() for p in model.patch_embed.parameters()) + model.cls_token.numel() + model.pos_embed.numel()
    assert n_stem == n_front, "blocks, final norm and head are not part of the stem"


def test_extract_pools_every_node_and_records_shapes(x):
    model = timm.create_model("resnet18", num_classes=5).eval()
    nf = F.extract(model, x, batch_size=3)
    assert nf.names[0] == "<stem>" and len(nf.feats) == 9
    assert nf.feats[0].shape == (4, 64) and nf.feats[-1].shape == (4, 512)
    assert nf.out_shapes[-1] == (512, 1, 1) and nf.fmt[-1] == "NCHW"


def test_unsupported_model_without_feature_info_is_a_clear_error():
    with pytest.raises(F.DissectionError, match="feature_info"):
        F.node_names(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_non_finite_features_stop_extraction_naming_the_node(x):
    model = timm.create_model("resnet18", num_classes=5).eval()
    with torch.no_grad():
        model.get_submodule("layer2.1.conv2").weight[0, 0, 0, 0] = float("nan")  # a broken checkpoint
    with pytest.raises(FloatingPointError, match=r"non-finite features at node layer2\.1"):
        F.extract(model, x)


@pytest.mark.parametrize("arch,family", [("resnet18", "cnn"), ("convnext_atto", "cnn"),
                                         ("mobilenetv3_small_050", "cnn"), ("vit_tiny_patch16_224", "transformer"),
                                         ("swin_tiny_patch4_window7_224", "transformer")])
def test_every_node_knows_its_family_and_swin_maps_are_a_transformers(arch, family, x):
    """The transition rule (CNN -> Transformer only) is by family: Swin's NHWC maps come from attention."""
    model = timm.create_model(arch, num_classes=10, **FAMILIES[arch][0]).eval()
    tr = F.trace(model, x[:2])
    meta = F.describe(model, F.pooled_features(model, tr, x, batch_size=4), tr)
    assert set(meta["family"]) == {family} and len(meta["family"]) == len(meta["names"])
