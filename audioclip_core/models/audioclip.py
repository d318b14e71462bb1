"""AudioCLIP: CLIP's image and text towers (open_clip) plus the ESResNeXt-fbsp audio head.

The module tree reproduces the official state-dict layout: CLIP's keys at the root
(`visual.*`, `transformer.*`, `token_embedding.weight`, ...), the audio head under `audio.`,
and the two extra logit scales `logit_scale_ai` / `logit_scale_at`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, text_global_pool
from torch import nn

from ..losses import contrastive_loss
from ..text import apply_template, tokenize
from .esresnext import AudioConfig, ESResNeXt

TextInput = Union[torch.Tensor, Sequence[Union[str, Sequence[str]]]]


class Features(NamedTuple):
    audio: Optional[torch.Tensor]
    image: Optional[torch.Tensor]
    text: Optional[torch.Tensor]


class Logits(NamedTuple):
    audio_image: Optional[torch.Tensor]
    audio_text: Optional[torch.Tensor]
    image_text: Optional[torch.Tensor]


class AudioCLIPOutput(NamedTuple):
    """`features` are L2-normalised; `logits` are scale * a @ b.T; `loss` is None without a pair."""

    features: Features
    logits: Logits
    loss: Optional[torch.Tensor]


def clamp_scale(param: torch.Tensor) -> torch.Tensor:
    """exp(param) clamped to [1, 100] at use time; the parameter itself is never clamped."""
    return torch.clamp(param.exp(), min=1.0, max=100.0)


class AudioCLIP(CLIP):
    def __init__(
        self,
        embed_dim: int,
        vision_cfg: dict,
        text_cfg: dict,
        audio_cfg: AudioConfig | dict | None = None,
        *,
        quick_gelu: bool = True,
        init_logit_scale: float = math.log(1 / 0.07),
        preset: str | None = None,
    ):
        super().__init__(embed_dim, vision_cfg, text_cfg, quick_gelu=quick_gelu, init_logit_scale=init_logit_scale)
        if isinstance(audio_cfg, dict) or audio_cfg is None:
            audio_cfg = AudioConfig.from_dict(dict(audio_cfg or {}))
        # The audio projection follows the towers' embedding size.
        audio_cfg = AudioConfig.from_dict({**audio_cfg.to_dict(), "num_classes": embed_dim})
        self.embed_dim = embed_dim
        self.preset = preset
        self.checkpoint_metadata: dict = {}  # the metadata record of the checkpoint it was loaded from
        self.audio = ESResNeXt(audio_cfg)
        self.logit_scale_ai = nn.Parameter(torch.tensor(math.log(100.0)))
        self.logit_scale_at = nn.Parameter(torch.tensor(math.log(100.0)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # -- encoders (raw, unnormalised embeddings) ---------------------------------------
    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """`[B, C, T]` float32, 44.1 kHz, int16 range -> `[B, embed_dim]`."""
        return self.audio(audio.to(self.device))

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """`[B, 3, H, W]` CLIP-normalised -> `[B, embed_dim]`."""
        return super().encode_image(image.to(self.device), normalize=normalize)

    def tokenize(self, texts: TextInput, template: str = "{}") -> torch.Tensor:
        if isinstance(texts, torch.Tensor):
            return texts
        return tokenize(apply_template(list(texts), template), context_length=self.context_length)

    def encode_text(self, text: TextInput, normalize: bool = False, template: str = "{}") -> torch.Tensor:
        """`list[str]`, `list[list[str]]` (entities joined with ", ") or tokens -> `[N, embed_dim]`."""
        tokens = self.tokenize(text, template).to(self.device)
        return self._encode_tokens(tokens, normalize=normalize)

    def _causal_text(self) -> bool:
        """True when every text position attends only to itself and earlier positions."""
        mask = self.attn_mask  # 77 x 77: checked on each call, microseconds next to the tower
        return (
            mask is not None
            and mask.dim() == 2
            and bool(torch.isneginf(mask).equal(torch.ones_like(mask, dtype=torch.bool).triu(1)))
        )

    def _encode_tokens(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """open_clip's text tower, run only over the positions up to the last pooled token.

        Under the causal mask a pooled (end-of-text) position never sees the positions after
        it, so cutting the padding off the batch leaves every embedding unchanged while the
        tower does a fraction of the work (CLIP pads to 77 tokens; prompts are ~5-15)."""
        pool = self.text_pool_type
        if pool not in ("argmax", "eos") or not self._causal_text():
            return super().encode_text(tokens, normalize=normalize)
        if pool == "argmax":
            idx = tokens.argmax(dim=-1)
        else:
            idx = (tokens == self.text_eos_id).int().argmax(dim=-1)
        n = int(idx.max()) + 1 if tokens.shape[0] else tokens.shape[1]
        tokens = tokens[:, :n]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype) + self.positional_embedding[:n].to(cast_dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        x = text_global_pool(x, tokens, pool, eos_token_id=getattr(self, "text_eos_id", None))
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    # -- scales, logits, loss -----------------------------------------------------------
    def logit_scales(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clamped (image-text, audio-image, audio-text) scales."""
        return (clamp_scale(self.logit_scale), clamp_scale(self.logit_scale_ai), clamp_scale(self.logit_scale_at))

    def loss_ttf(self) -> torch.Tensor:
        return self.audio.loss_ttf()

    def forward(
        self,
        audio: Optional[torch.Tensor] = None,
        image: Optional[torch.Tensor] = None,
        text: Optional[TextInput] = None,
        *,
        sample_weights: Optional[torch.Tensor] = None,
        loss_variant: str = "reference",
        class_ids: Optional[torch.Tensor] = None,
        gather=None,
        scale_grad: float = 1.0,
    ) -> AudioCLIPOutput:
        """`gather`: a function applied to each normalised feature matrix before the logits
        (data-parallel training passes one that concatenates all ranks' features).
        `scale_grad` multiplies the gradient reaching the logit scales, not their value
        (data-parallel training uses 1 / world size, see training/distributed.py)."""
        a = i = t = None
        if audio is not None:
            a = F.normalize(self.encode_audio(audio), dim=-1, eps=0.0)
        if image is not None:
            i = F.normalize(self.encode_image(image), dim=-1, eps=0.0)
        if text is not None:
            t = F.normalize(self.encode_text(text), dim=-1, eps=0.0)
        if gather is not None:
            a, i, t = (gather(f) if f is not None else None for f in (a, i, t))
        s_it, s_ai, s_at = self.logit_scales()
        if scale_grad != 1.0:
            s_it, s_ai, s_at = (s * scale_grad + s.detach() * (1.0 - scale_grad) for s in (s_it, s_ai, s_at))
        l_ai = s_ai * a @ i.T if a is not None and i is not None else None
        l_at = s_at * a @ t.T if a is not None and t is not None else None
        l_it = s_it * i @ t.T if i is not None and t is not None else None
        logits = Logits(l_ai, l_at, l_it)
        loss = contrastive_loss(logits, sample_weights=sample_weights, variant=loss_variant, class_ids=class_ids)
        if loss is not None and audio is not None:
            loss = loss + self.loss_ttf()
        return AudioCLIPOutput(Features(a, i, t), logits, loss)

    # -- freezing (cooperative training) -------------------------------------------------
    def freeze(self, *, image: bool = False, text: bool = False, audio: bool = False) -> None:
        """Freeze towers: parameters stop requiring grad; BN of a frozen image tower stays in eval."""
        groups = {
            "image": [self.visual],
            "text": [self.transformer, self.token_embedding, self.ln_final],
            "audio": [self.audio],
        }
        for name, flag in (("image", image), ("text", text), ("audio", audio)):
            if not flag:
                continue
            for mod in groups[name]:
                for p in mod.parameters():
                    p.requires_grad_(False)
        if text:
            self.positional_embedding.requires_grad_(False)
            self.text_projection.requires_grad_(False)
        if image and text:
            self.logit_scale.requires_grad_(False)
