"""LoRA adapters on open_clip layers: identity at start, only adapters train, merging is exact."""

import pytest
import torch

from clipunlearn import lora
from clipunlearn.losses import forgetting_loss


@pytest.fixture(params=["vit", "resnet"])
def clip_model(request, tiny_clip, tiny_resnet_clip):
    return (tiny_clip if request.param == "vit" else tiny_resnet_clip).model


def encode(model, batch):
    with torch.no_grad():
        return torch.cat([model.encode_image(batch["images"]), model.encode_text(batch["texts"])], dim=1)


def test_lora_targets_cover_linear_conv_and_attention(tiny_clip, tiny_resnet_clip):
    rn = lora.lora_targets(tiny_resnet_clip.model)
    assert {"visual.layer4.0.conv2", "visual.layer1.0.downsample.0", "visual.attnpool.q_proj",
            "visual.attnpool.c_proj", "transformer.resblocks.1.attn", "transformer.resblocks.1.mlp.c_fc"} <= set(rn)
    vit = lora.lora_targets(tiny_clip.model)
    assert {"visual.transformer.resblocks.1.attn", "visual.transformer.resblocks.1.mlp.c_proj"} <= set(vit)
    assert not any(n.endswith("out_proj") for n in vit)  # covered by its attention module
    assert lora.lora_targets(tiny_clip.model, ["visual.conv1", "visual.ln_pre"]) == ["visual.conv1"]


def test_add_lora_starts_as_identity_and_freezes_the_rest(clip_model, tiny_batch):
    before = encode(clip_model, tiny_batch)
    names = lora.add_lora(clip_model, lora.lora_targets(clip_model), rank=2, alpha=4)
    assert lora.has_lora(clip_model) and names and all(n.endswith((".lora_A", ".lora_B")) for n in names)
    assert torch.equal(encode(clip_model, tiny_batch), before)  # B = 0: the adapted model is the same
    trainable = [n for n, p in clip_model.named_parameters() if p.requires_grad]
    assert trainable == names  # only the adapters train


def test_one_step_changes_outputs_and_only_adapters(clip_model, tiny_batch):
    targets = lora.lora_targets(clip_model)[-3:] + [n for n in lora.lora_targets(clip_model) if "attn" in n][:1]
    lora.add_lora(clip_model, targets, rank=2)
    before_out = encode(clip_model, tiny_batch)
    frozen = {n: p.detach().clone() for n, p in clip_model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(clip_model.parameters(), lr=1e-2)  # every parameter offered, adapters only train
    loss = forgetting_loss(clip_model, tiny_batch)
    loss.backward()
    optimizer.step()
    assert forgetting_loss(clip_model, tiny_batch) < loss  # the step works through the adapters
    assert not torch.allclose(encode(clip_model, tiny_batch), before_out)
    assert all(torch.equal(p, frozen[n]) for n, p in clip_model.named_parameters() if n in frozen)


def test_merge_gives_the_same_outputs_and_a_plain_state_dict(clip_model, tiny_batch):
    plain_keys = list(clip_model.state_dict())
    flags = {n: p.requires_grad for n, p in clip_model.named_parameters()}
    targets = lora.lora_targets(clip_model)
    lora.add_lora(clip_model, targets, rank=2)
    with torch.no_grad():
        for p in lora.lora_parameters(clip_model):
            p.normal_(std=0.05)  # a non-trivial adapter
    adapted = encode(clip_model, tiny_batch)
    merged = lora.merge_lora(clip_model)
    assert len(merged) == len(targets) + sum(n.endswith(".attn") for n in targets)  # attention: in_proj + out_proj
    assert not lora.has_lora(clip_model) and list(clip_model.state_dict()) == plain_keys
    torch.testing.assert_close(encode(clip_model, tiny_batch), adapted, rtol=1e-5, atol=1e-5)
    assert all(clip_model.get_parameter(n).requires_grad == flags[n] for n in merged)


def test_adapter_acts_where_open_clip_reads_weights_directly(tiny_resnet_clip, tiny_batch):
    """AttentionPool2d never calls q_proj: a module wrapper (peft's approach) is bypassed, the parametrization is not."""
    model = tiny_resnet_clip.model
    before = encode(model, tiny_batch)

    class ShiftedLinear(torch.nn.Module):  # what a forward-wrapping adapter does
        def __init__(self, base):
            super().__init__()
            self.base, self.weight, self.bias = base, base.weight, base.bias

        def forward(self, x):
            return self.base(x) + 1.0

    original = model.visual.attnpool.q_proj
    model.visual.attnpool.q_proj = ShiftedLinear(original)
    assert torch.equal(encode(model, tiny_batch), before)  # the wrapper's forward never runs
    model.visual.attnpool.q_proj = original
    lora.add_lora(model, ["visual.attnpool.q_proj"], rank=2)
    with torch.no_grad():
        lora.lora_parameters(model)[1].normal_()  # B
    assert not torch.allclose(encode(model, tiny_batch), before)


def test_add_lora_rejects_bad_modules(tiny_clip):
    model = tiny_clip.model
    with pytest.raises(ValueError, match="adaptable"):
        lora.add_lora(model, ["visual.ln_pre"], rank=2)
    with pytest.raises(ValueError, match="adaptable"):
        lora.add_lora(model, ["visual.nope"], rank=2)
    with pytest.raises(ValueError, match="rank"):
        lora.add_lora(model, ["visual.conv1"], rank=1000)
    lora.add_lora(model, ["visual.conv1"], rank=2)
    with pytest.raises(ValueError, match="merge_lora first"):
        lora.add_lora(model, ["visual.conv1"], rank=2)
