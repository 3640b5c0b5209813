"""open_clip's CLIP models (any registry tag or weights file of a ViT CLIP) as this repository's CLIP, with the
head counts and MLP activation read from the open_clip model, which a state_dict does not hold. train.py does
not need it (`--clip openai:ViT-B-16` reads OpenAI's own file, clip.load_clip); use it from Python:

    from caer_clip.import_open_clip import load_open_clip
    clip = load_open_clip("ViT-B-16", "laion2b_s34b_b88k")     # then CAERModel(cfg, clip, tokenizer, descriptors)
"""

import torch.nn as nn

from caer_clip.clip import CLIP, clip_from_state_dict, require_open_clip


def open_clip_architecture(reference: nn.Module) -> dict:
    """Head counts and MLP activation of an open_clip CLIP, read from its modules (open_clip/model.py
    builds heads = vision_cfg.width // vision_cfg.head_width and text_cfg.heads, and QuickGELU only when
    the config says quick_gelu), as keyword arguments of clip_from_state_dict. Anything this CLIP
    does not compute is refused here: the key and shape checks cannot see a change of function."""
    open_clip = require_open_clip("reading an open_clip model")

    def refuse(what: str):
        raise ValueError(f"cannot load this open_clip model correctly: {what}")

    if type(reference) is not open_clip.model.CLIP:
        refuse(f"{type(reference).__name__} is not open_clip's CLIP (custom / HF text tower, CoCa)")
    visual = reference.visual
    if type(visual) is not open_clip.transformer.VisionTransformer:
        refuse(f"image tower {type(visual).__name__} is not open_clip's VisionTransformer (timm trunk or ResNet)")
    # open_clip/transformer.py VisionTransformer._pool / text_global_pool: ours takes the CLS token and the
    # argmax (EOT) token, text under a causal mask
    if visual.attn_pool is not None or visual.pool_type != "tok":
        refuse(f"image pooling {visual.pool_type!r} / attentional pooler (ours: the CLS token, 'tok')")
    if reference.text_pool_type != "argmax":
        refuse(f"text pooling {reference.text_pool_type!r} (ours: the EOT token, 'argmax')")
    if reference.attn_mask is None:
        refuse("bidirectional text attention (no_causal_mask; ours is causal)")
    for module in reference.modules():
        if isinstance(module, nn.LayerNorm) and (module.eps != 1e-5 or not module.elementwise_affine):
            refuse(f"LayerNorm eps {module.eps} / affine {module.elementwise_affine} (ours: 1e-5, affine)")
    heads, quick_gelu = {"image": set(), "text": set()}, set()  # one value each, or refused
    for name, tower in (("image", visual.transformer), ("text", reference.transformer)):
        for block in tower.resblocks:
            act, plain = block.mlp.gelu, type(block) is open_clip.transformer.ResidualAttentionBlock
            if not plain or not isinstance(block.attn, nn.MultiheadAttention):
                refuse(f"{name} block {type(block).__name__} is not open_clip's standard ResidualAttentionBlock")
            if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
                refuse(f"{name} blocks have LayerScale (ls_init_value)")
            quick = type(act) is open_clip.transformer.QuickGELU
            if not quick and not (type(act) is nn.GELU and act.approximate == "none"):
                refuse(f"{name} MLP activation {act!r} (ours: QuickGELU or exact nn.GELU)")
            heads[name].add(block.attn.num_heads)
            quick_gelu.add(quick)
    if len(heads["image"]) != 1 or len(heads["text"]) != 1 or len(quick_gelu) != 1:
        refuse(f"blocks differ in heads {heads} or in activation (QuickGELU: {quick_gelu})")
    return dict(vision_heads=heads["image"].pop(), transformer_heads=heads["text"].pop(), quick_gelu=quick_gelu.pop())


def load_open_clip(name: str = "ViT-B-16", pretrained: str | None = "openai") -> CLIP:
    """Our CLIP with the weights, head counts and activation of an open_clip model (registry tag or file).
    The activation belongs to the weights: open_clip/pretrained.py marks the tags trained with QuickGELU, while
    factory.py create_model only warns when the config disagrees (ViT-B-16 'openai' builds nn.GELU); the
    tag's activation is forced here, and a QuickGELU config with GELU-trained weights is refused."""
    open_clip = require_open_clip("loading open_clip weights")
    tag_cfg = open_clip.get_pretrained_cfg(name.replace("/", "-"), pretrained) if pretrained else {}
    tag_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    reference = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=tag_quick_gelu)
    model = clip_from_state_dict(reference.state_dict(), **open_clip_architecture(reference))  # OpenAI's names
    if tag_cfg and model.cfg.quick_gelu != tag_quick_gelu:
        raise ValueError(f"open_clip {name!r} uses QuickGELU but its weights {pretrained!r} were trained with GELU: "
                         "use the model name without '-quickgelu'")
    return model
