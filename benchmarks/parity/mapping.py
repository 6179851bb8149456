"""Parameter names: ours -> the reference code's, and copying weights across.

Each map is an ordered list of ``(pattern, replacement)`` regular expressions
applied to one of our ``state_dict`` keys; the first that matches names the
reference's parameter (a third element marks a slice of a fused reference
tensor). ``UNMAPPED`` lists, per model, our parameters that the reference has
no counterpart for, and ``REFERENCE_UNUSED`` the reference's parameters that
none of ours fills, each with the reason: every parameter on either side is
either copied or deliberately left out.
"""

import re

import torch

__all__ = [
    "MAPS",
    "REFERENCE_UNUSED",
    "UNMAPPED",
    "copy_weights",
    "map_names",
    "max_abs_diff",
    "reference_name",
    "reference_target",
    "unused_reference_names",
]

_DIFFUREC_BLOCK = [
    (r"^blocks\.(\d+)\.attention_norm\.", r"{att}.\1.input_sublayer.norm."),
    (r"^blocks\.(\d+)\.feed_forward_norm\.", r"{att}.\1.output_sublayer.norm."),
    (r"^blocks\.(\d+)\.attention\.query\.", r"{att}.\1.{self}.linear_layers.0."),
    (r"^blocks\.(\d+)\.attention\.key\.", r"{att}.\1.{self}.linear_layers.1."),
    (r"^blocks\.(\d+)\.attention\.value\.", r"{att}.\1.{self}.linear_layers.2."),
    (r"^blocks\.(\d+)\.attention\.output\.", r"{att}.\1.{self}.w_layer."),
    (r"^blocks\.(\d+)\.feed_forward\.0\.", r"{att}.\1.feed_forward.w_1."),
    (r"^blocks\.(\d+)\.feed_forward\.3\.", r"{att}.\1.feed_forward.w_2."),
]
_DIFFUREC_COMMON = [
    (r"^item_embedding\.", "item_embeddings."),
    (r"^embedding_norm\.", "LayerNorm."),
    (r"^step_embedding\.mlp\.", "diffu.xstart_model.time_embed."),
    (r"^output_norm\.", "diffu.xstart_model.norm_diffu_rep."),
]


def _blocks(self_attention):
    att = "diffu.xstart_model.att.transformer_blocks"
    return [
        (pattern, replacement.format(att=att, self=self_attention))
        for pattern, replacement in _DIFFUREC_BLOCK
    ]


_ADREC_BLOCK = [
    (r"\.attention\.query\.", ".attention.linear_layers.0."),
    (r"\.attention\.key\.", ".attention.linear_layers.1."),
    (r"\.attention\.value\.", ".attention.linear_layers.2."),
    (r"\.attention\.output\.", ".attention.w_layer."),
    (r"\.attention_norm\.", ".input_sublayer.norm."),
    (r"\.feed_forward\.0\.", ".feed_forward.w_1."),
    (r"\.feed_forward\.2\.", ".feed_forward.w_2."),
    (r"\.feed_forward_norm\.", ".output_sublayer.norm."),
]


def _adrec_map():
    rules = [
        (r"^item_embedding\.", "item_embedding."),
        (r"^embedding_norm\.", "hist_norm."),
        (r"^step_embedding\.mlp\.", "diffu.net.time_embed."),
    ]
    for ours, theirs in (
        ("cam", "diffu.ag_encoder"),
        ("adm", "diffu.net.decoder"),
    ):
        for pattern, replacement in _ADREC_BLOCK:
            rules.append(
                (
                    rf"^{ours}\.blocks\.(\d+){pattern}",
                    rf"{theirs}.transformer_blocks.\1{replacement}",
                )
            )
    return rules


MAPS = {
    "DiffuRec": _DIFFUREC_COMMON + _blocks("attention"),
    # The DiffuRecSys repository's block calls its self-attention "MU".
    "DiffuRecSys": _DIFFUREC_COMMON + _blocks("MU"),
    "CDDRec": [
        (r"^item_embedding\.", "item_embeddings."),
        (r"^position_embedding\.", "position_embeddings."),
        (r"^LayerNorm\.", "LayerNorm."),
        (
            r"^trm_encoder\.layer\.(\d+)\.multi_head_attention\.",
            r"conditional_encoder.layer.\1.attention.",
        ),
        (
            r"^trm_encoder\.layer\.(\d+)\.feed_forward\.",
            r"conditional_encoder.layer.\1.intermediate.",
        ),
        (r"^decoder\.step_embedding\.", "time_embeddings."),
        # the stock decoder layer's self-attention holds q, k, v in one fused
        # [3H H] projection: ours go to its thirds
        (r"^decoder\.query\.(weight|bias)$", r"decoder.self_attn.in_proj_\1", (0, 3)),
        (r"^decoder\.key\.(weight|bias)$", r"decoder.self_attn.in_proj_\1", (1, 3)),
        (r"^decoder\.value\.(weight|bias)$", r"decoder.self_attn.in_proj_\1", (2, 3)),
        (r"^decoder\.output\.", "decoder.self_attn.out_proj."),
        (r"^decoder\.attn_norm\.", "decoder.norm1."),
        (r"^decoder\.feed_forward\.0\.", "decoder.linear1."),
        (r"^decoder\.feed_forward\.3\.", "decoder.linear2."),
        (r"^decoder\.ffn_norm\.", "decoder.norm3."),
    ],
    "ADRec": _adrec_map(),
}

UNMAPPED = {
    "DiffuRec": {},
    "DiffuRecSys": {
        "cross_attention.": "the reference's cross-attention is a linear attention "
        "inside each block (a documented deviation, not compared)",
    },
    "CDDRec": {
        "mask_embedding": "the reference has an extra item row for the mask token; "
        "no check feeds a mask token",
    },
    "ADRec": {},
}

# The reference's parameters that none of ours maps to, by name prefix, with
# the reason; they keep the reference's own initial values.
REFERENCE_UNUSED = {
    "DiffuRec": {
        "position_embeddings.": "built but unused by its forward",
        "diffu.xstart_model.linear_": "built but unused by its forward",
        "diffu.xstart_model.fuse_linear.": "built but unused by its forward",
    },
    "DiffuRecSys": {
        "position_embeddings.": "built but unused by its forward",
        "diffu.xstart_model.linear_": "built but unused by its forward",
        "diffu.xstart_model.fuse_linear.": "built but unused by its forward",
        "diffu.xstart_model.CA.": "built but unused by its forward",
        "diffu.xstart_model.att.transformer_blocks.": "the blocks' linear "
        "cross-attention `CA` (a documented deviation, not compared)",
    },
    "CDDRec": {
        "decoder.multihead_attn.": "the stock layer's attention to the step "
        "embedding; ours has none (the decoder check sets its output to zero)",
        "decoder.norm2.": "the LayerNorm after that attention",
    },
    "ADRec": {},
}


def reference_target(model, key):
    """``(reference name, chunk)`` of our parameter ``key``, or None when unmapped.

    ``chunk`` is None for a whole tensor, else ``(index, count)``: ours is the
    ``index``-th of ``count`` equal slices, along dim 0, of the reference's.
    """
    for rule in MAPS[model]:
        pattern, replacement = rule[:2]
        if re.search(pattern, key):
            chunk = rule[2] if len(rule) > 2 else None
            return re.sub(pattern, replacement, key, count=1), chunk
    return None


def reference_name(model, key):
    """The reference's name of our parameter ``key``, or None when unmapped."""
    target = reference_target(model, key)
    return None if target is None else target[0]


def map_names(model, keys):
    """``{our key: (reference key, chunk)}`` for ``keys``.

    Raises:
        KeyError: a key that no rule maps and ``UNMAPPED`` does not list, or
            two keys mapped to the same reference tensor (or slice of it).
    """
    mapping, unexplained = {}, []
    for key in keys:
        target = reference_target(model, key)
        if target is not None:
            mapping[key] = target
        elif not any(key.startswith(prefix) for prefix in UNMAPPED[model]):
            unexplained.append(key)
    if unexplained:
        raise KeyError(f"{model}: no reference name for {', '.join(unexplained)}")
    if len(set(mapping.values())) != len(mapping):
        raise KeyError(f"{model}: two of our parameters map to one reference tensor")
    return mapping


def unused_reference_names(model, mapping, reference_keys):
    """The reference's keys no mapped parameter fills.

    Raises:
        KeyError: one of them is not excused by ``REFERENCE_UNUSED``.
    """
    filled = {name for name, _ in mapping.values()}
    unused = sorted(key for key in reference_keys if key not in filled)
    unexplained = [
        key
        for key in unused
        if not any(key.startswith(p) for p in REFERENCE_UNUSED[model])
    ]
    if unexplained:
        raise KeyError(
            f"{model}: reference parameters left unfilled: {', '.join(unexplained)}"
        )
    return unused


def copy_weights(model, ours, reference):
    """Copy every mapped parameter of ``ours`` into the module ``reference``.

    Returns the mapping used. Every reference parameter is either filled or
    excused by ``REFERENCE_UNUSED``; a fused reference tensor is filled slice
    by slice.

    Raises:
        KeyError: a mapped name the reference does not have, or a reference
            parameter neither filled nor excused.
        ValueError: a shape mismatch.
    """
    ours_state = ours.state_dict()
    mapping = map_names(model, ours_state.keys())
    theirs = reference.state_dict()
    unused_reference_names(model, mapping, theirs.keys())
    for our_key, (their_key, chunk) in mapping.items():
        if their_key not in theirs:
            raise KeyError(
                f"{model}: the reference has no {their_key} (ours {our_key})"
            )
        target = theirs[their_key]
        if chunk is not None:
            index, count = chunk
            size = target.shape[0] // count
            target = target[index * size : (index + 1) * size]
        if target.shape != ours_state[our_key].shape:
            raise ValueError(
                f"{model}: {our_key} {tuple(ours_state[our_key].shape)} vs "
                f"{their_key} {tuple(target.shape)}"
            )
        target.copy_(ours_state[our_key].detach())
    reference.load_state_dict(theirs)
    return mapping


def max_abs_diff(a, b):
    """Largest absolute difference of two tensors of the same shape, as a float."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).abs().max()) if a.numel() else 0.0
