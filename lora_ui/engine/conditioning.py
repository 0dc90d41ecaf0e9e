"""A1111's prompt emphasis and long-prompt encoding for diffusers pipelines.

Parsing (A1111 modules/prompt_parser.parse_prompt_attention): `(text)` multiplies attention by 1.1,
`[text]` divides by 1.1, `(text:1.3)` sets 1.3, `\\(` `\\)` `\\[` `\\]` `\\\\` are literal, unbalanced
brackets close at the end, `BREAK` starts a new 75-token chunk.

Encoding (A1111 modules/sd_hijack_clip.py, emphasis "Original"):
  * each parsed segment is tokenized without special tokens; tokens go into chunks of 75 with their
    weights; a chunk that fills up breaks at the last comma if it is within 20 tokens (A1111's
    "comma padding backtrack"); each chunk is padded with EOS to 75 and wrapped as [BOS] + 75 + [EOS];
    for SDXL's second encoder everything after the first EOS becomes the pad token "!" (id 0);
  * each 77-token chunk goes through the text encoder on its own; the hidden states z (1, 77, D) are
    multiplied token-wise by the weights and rescaled so their mean is the mean before weighting:
        z' = z * w[:, None];  z'' = z' * (mean(z) / mean(z'))
  * chunks are concatenated along the sequence: (1, 77 * n_chunks, D);
  * layers: SD1 uses the last hidden state, or with clip skip N > 1 hidden_states[-N] followed by the
    final layer norm; SDXL uses the penultimate hidden state of both encoders (no final norm; clip
    skip is ignored for SDXL, as in A1111), concatenated on the feature axis (768 + 1280 for real
    SDXL), and the pooled (projected) output of encoder 2 for the first chunk, never weighted;
  * prompt and negative prompt are padded to the same length by appending the encoding of the
    empty prompt (A1111's pad_cond); an empty SDXL negative prompt is all zeros when the pipeline's
    `force_zeros_for_empty_prompt` is set (diffusers and A1111 both do this).
A prompt with no emphasis, no BREAK and at most 75 tokens gives exactly what diffusers'
`encode_prompt` gives.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
BREAK_MARK = ("BREAK", -1.0)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """A1111's parser: [(text, weight), ...]; a BREAK is ("BREAK", -1). Adjacent equal weights merge.

    >>> parse_prompt_attention("a (house:1.5) [in] the (woods)")
    [('a ', 1.0), ('house', 1.5), (' ', 1.0), ('in', 0.9090909090909091), (' the ', 1.0), ('woods', 1.1)]
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            try:
                multiply_range(round_brackets.pop(), float(weight))
            except ValueError:  # "(a:1.2.3)": A1111 would crash; keep the text literally instead
                res.append([piece, 1.0])
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(piece)):
                if i > 0:
                    res.append(list(BREAK_MARK))
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, float(w)) for t, w in res]


@dataclass
class PromptChunk:
    """77 token ids ([BOS] + 75 + [EOS]) and their 77 weights."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


def tokenize_chunks(tokenizer, prompt: str) -> list[PromptChunk]:
    """Prompt -> chunks of 77 ids and weights, exactly as A1111's tokenize_line (no embeddings)."""
    parsed = parse_prompt_attention(prompt)
    texts = [t for t, _ in parsed]
    ids_per_segment = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.get_vocab().get(",</w>")

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        to_add = CHUNK_LENGTH - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [eos] * to_add
            chunk.multipliers += [1.0] * to_add
        chunk.tokens = [bos] + chunk.tokens + [eos]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    for ids, (text, weight) in zip(ids_per_segment, parsed):
        if (text, weight) == BREAK_MARK:
            next_chunk()
            continue
        for token in ids:
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                next_chunk()
                chunk.tokens, chunk.multipliers = moved_tokens, moved_mults
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            chunk.tokens.append(token)
            chunk.multipliers.append(weight)
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111 "Original" emphasis. z: (B, 77, D), multipliers: (B, 77) -> (B, 77, D), in fp32."""
    z = z.float()
    original_mean = z.mean()
    weighted = z * multipliers.float().unsqueeze(-1)
    new_mean = weighted.mean()
    # A mean near zero (an untrained final layer norm has bias 0) would turn the rescale into inf/NaN;
    # real CLIP hidden states have a clearly non-zero mean, so this only guards degenerate models.
    if not torch.isfinite(original_mean / new_mean) or new_mean.abs() < 1e-4 * z.abs().mean():
        return weighted
    return weighted * (original_mean / new_mean)


def _encode_chunk(text_encoder, ids: torch.Tensor, *, hidden_index: int | None, final_norm: bool):
    """ids: (1, 77) -> (hidden (1, 77, D), pooled-or-None). hidden_index None = last hidden state."""
    out = text_encoder(ids, output_hidden_states=hidden_index is not None)
    if hidden_index is None:
        z = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    else:
        z = out.hidden_states[hidden_index]
        if final_norm:
            # transformers 5 dropped the `text_model` level of CLIPTextModel; older versions have it
            z = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(z)
    pooled = getattr(out, "text_embeds", None)
    return z, pooled


def encode_with_encoder(text_encoder, tokenizer, prompt: str, *, hidden_index: int | None,
                        final_norm: bool, pad_id: int | None = None):
    """One encoder: prompt -> (z (1, 77*n, D) with emphasis, pooled of chunk 0 (1, P) or None)."""
    device = text_encoder.device
    dtype = text_encoder.dtype
    zs, pooled = [], None
    for i, chunk in enumerate(tokenize_chunks(tokenizer, prompt)):
        tokens = list(chunk.tokens)
        if pad_id is not None and pad_id != tokenizer.eos_token_id:
            first_eos = tokens.index(tokenizer.eos_token_id)
            tokens[first_eos + 1:] = [pad_id] * (len(tokens) - first_eos - 1)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        z, chunk_pooled = _encode_chunk(text_encoder, ids, hidden_index=hidden_index, final_norm=final_norm)
        mults = torch.tensor([chunk.multipliers], device=device)
        zs.append(apply_emphasis(z, mults).to(dtype))
        if i == 0:
            pooled = chunk_pooled
    return torch.cat(zs, dim=1), pooled


@dataclass
class Conditioning:
    """Embeddings for one prompt pair, batch 1. Shapes: prompt/negative (1, 77*n, D) with equal n;
    pooled (1, P) for SDXL, else None."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def pipeline_kwargs(self, batch: int = 1) -> dict[str, torch.Tensor]:
        """kwargs for the diffusers pipeline call, repeated for `batch` images."""
        def rep(t):
            return t.repeat(batch, *([1] * (t.dim() - 1)))

        kw = {"prompt_embeds": rep(self.prompt_embeds), "negative_prompt_embeds": rep(self.negative_prompt_embeds)}
        if self.pooled_prompt_embeds is not None:
            kw["pooled_prompt_embeds"] = rep(self.pooled_prompt_embeds)
            kw["negative_pooled_prompt_embeds"] = rep(self.negative_pooled_prompt_embeds)
        return kw


def _encode_sd1(pipe, prompt: str, clip_skip: int):
    if clip_skip > 1:
        return encode_with_encoder(pipe.text_encoder, pipe.tokenizer, prompt, hidden_index=-clip_skip,
                                   final_norm=True)[0], None
    return encode_with_encoder(pipe.text_encoder, pipe.tokenizer, prompt, hidden_index=None,
                               final_norm=False)[0], None


def _encode_sdxl(pipe, prompt: str):
    z1, _ = encode_with_encoder(pipe.text_encoder, pipe.tokenizer, prompt, hidden_index=-2, final_norm=False)
    z2, pooled = encode_with_encoder(pipe.text_encoder_2, pipe.tokenizer_2, prompt, hidden_index=-2,
                                     final_norm=False, pad_id=pipe.tokenizer_2.pad_token_id)
    return torch.cat([z1, z2], dim=-1), pooled


def _pad_to(z: torch.Tensor, chunks: int, empty: torch.Tensor) -> torch.Tensor:
    missing = chunks - z.shape[1] // (CHUNK_LENGTH + 2)
    return torch.cat([z] + [empty] * missing, dim=1) if missing > 0 else z


@torch.no_grad()
def encode_prompts(pipe, arch: str, prompt: str, negative_prompt: str = "", *, clip_skip: int = 1) -> Conditioning:
    """Encode prompt and negative prompt the A1111 way for a StableDiffusion(XL)Pipeline.

    `arch` is "sd1" or "sdxl"; `clip_skip` >= 1 (1 = last layer; SD1 only)."""
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
    if arch == "sdxl":
        cond, pooled = _encode_sdxl(pipe, prompt)
        zero_negative = negative_prompt == "" and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        if zero_negative:
            uncond, uncond_pooled = torch.zeros_like(cond[:, :CHUNK_LENGTH + 2]), torch.zeros_like(pooled)
        else:
            uncond, uncond_pooled = _encode_sdxl(pipe, negative_prompt)
        encode_empty = lambda: _encode_sdxl(pipe, "")[0]  # noqa: E731
    elif arch == "sd1":
        cond, pooled = _encode_sd1(pipe, prompt, clip_skip)
        uncond, uncond_pooled = _encode_sd1(pipe, negative_prompt, clip_skip)
        encode_empty = lambda: _encode_sd1(pipe, "", clip_skip)[0]  # noqa: E731
    else:
        raise ValueError(f"Unknown architecture {arch!r}; expected 'sd1' or 'sdxl'.")
    if cond.shape[1] != uncond.shape[1]:
        empty = encode_empty()
        chunks = max(cond.shape[1], uncond.shape[1]) // (CHUNK_LENGTH + 2)
        cond, uncond = _pad_to(cond, chunks, empty), _pad_to(uncond, chunks, empty)
    return Conditioning(cond, uncond, pooled, uncond_pooled)
