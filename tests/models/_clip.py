"""Shared by the CLIP tests: a micro configuration (CLIPConfig overrides) that builds in
milliseconds: width 32, one layer per tower, 32x32 images in 8x8 patches, context 16."""

TINY_CLIP = dict(
    embed_dim=32,
    vision_width=32,
    vision_layers=1,
    vision_head_width=16,
    vision_patch_size=8,
    image_size=32,
    text_width=32,
    text_heads=2,
    text_layers=1,
    context_length=16,
)
