"""Cutting a causal LM into pipeline stages: which layers a stage holds and the module that runs them.

Stage 0 holds the embeddings, the last stage the final norm and the head; the decoder layers are split
evenly, earlier stages taking the remainder because the last one also runs the head and the loss.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def stage_layers(num_layers: int, stages: int) -> list[range]:
    """The decoder layers of each stage: an even split, the earlier stages taking one extra each."""
    if not 1 <= stages <= num_layers:
        raise ValueError(f"{stages} stages for a model with {num_layers} decoder layers")
    base, extra = divmod(num_layers, stages)
    out, start = [], 0
    for s in range(stages):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def layout(rank: int, world: int, stages: int) -> tuple[int, int]:
    """(replica, stage) of a rank: one pipeline is `stages` consecutive ranks."""
    if world % stages:
        raise ValueError(f"{stages} stages do not divide {world} workers")
    return rank // stages, rank % stages


def base_model(model) -> nn.Module:
    """The transformers *ForCausalLM under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(base) -> tuple[str, nn.Module]:
    """('gpt2', GPT2Model) or ('llama', LlamaModel-like: Llama, Mistral, Qwen2)."""
    if hasattr(base, "transformer") and hasattr(base.transformer, "h"):
        return "gpt2", base.transformer
    if hasattr(base, "model") and hasattr(base.model, "layers") and hasattr(base.model, "embed_tokens"):
        return "llama", base.model
    raise ValueError(f"pipeline cannot split {type(base).__name__}: no GPT-2 or Llama-style decoder")


class StageModule(nn.Module):
    """One stage's forward: (embeddings) -> its decoder layers -> (final norm, head); positions 0..L-1."""

    def __init__(self, base, stage: int, stages: int, layers: range, act_dtype: torch.dtype):
        super().__init__()
        self.kind, dec = decoder(base)
        self.config = dec.config
        self.first, self.last = stage == 0, stage == stages - 1
        self.act_dtype = act_dtype
        all_layers = dec.h if self.kind == "gpt2" else dec.layers
        self.layer_ids = list(layers)
        self.blocks = nn.ModuleList([all_layers[i] for i in layers])
        if self.kind == "gpt2":
            self.wte, self.wpe, self.drop = (dec.wte, dec.wpe, dec.drop) if self.first else (None, None, None)
            self.norm = dec.ln_f if self.last else None
            self.rotary = None
        else:
            self.embed = dec.embed_tokens if self.first else None
            self.norm = dec.norm if self.last else None
            self.rotary = dec.rotary_emb  # no parameters; every stage computes its own cos/sin
        self.head = base.lm_head if self.last else None
        n = getattr(self.config, "num_hidden_layers", None) or len(all_layers)
        types = getattr(self.config, "layer_types", None)
        if not types:
            kind = "sliding_attention" if getattr(self.config, "sliding_window", None) else "full_attention"
            types = [kind] * n
        self.mask_types = [types[i] for i in layers]
        # the loop's autocast, applied to the forward only (the schedule runs backward inside step() too)
        self.autocast = contextlib.nullcontext

    def _masks(self, h: torch.Tensor, pos: torch.Tensor) -> dict:
        """Causal masks in the form this config's attention wants (None for SDPA's is_causal path)."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kw = dict(
            config=self.config, inputs_embeds=h, attention_mask=None, past_key_values=None, position_ids=pos
        )
        out = {}
        for t in set(self.mask_types):
            fn = create_sliding_window_causal_mask if t == "sliding_attention" else create_causal_mask
            out[t] = fn(**kw)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        pos = torch.arange(length, device=x.device).unsqueeze(0)
        if self.first:
            if self.kind == "gpt2":
                h = self.drop(self.wte(x) + self.wpe(pos))
            else:
                h = self.embed(x)
        else:
            h = x
        masks = self._masks(h, pos)
        if self.kind == "gpt2":
            for block, t in zip(self.blocks, self.mask_types):
                h = block(h, attention_mask=masks[t], position_ids=pos)
        else:
            rope = self.rotary(h, position_ids=pos)
            for layer, t in zip(self.blocks, self.mask_types):
                h = layer(h, attention_mask=masks[t], position_ids=pos, position_embeddings=rope)
        if not self.last:
            return h.to(self.act_dtype)  # the statically declared dtype of what goes to the next stage
        return self.head(self.norm(h))
