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
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch

from lora_ui.engine.prompt_schedule import get_schedule, index_at_call, split_and
from lora_ui.engine.sampling.cond import Cond, ImageConds

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


# ------------------------------------------------------------------------------------------------
# Token substitution hook (textual-inversion embeddings, A1111's EmbeddingsWithFixes)
# ------------------------------------------------------------------------------------------------

class TokenSubstitution(Protocol):
    """What tokenize_chunks/encoding ask while a hook is active (lora_ui.textual_inversion implements it)."""

    def find(self, tokenizer, tokens: list[int], position: int) -> "tuple[Any, int, int] | None":
        """(key, tokens it spans from `position`, vectors it takes in the chunk) or None."""

    def vectors(self, key: Any, text_encoder) -> torch.Tensor:
        """The (n, D) vectors of `key` for this text encoder."""


_SUBSTITUTION: ContextVar["TokenSubstitution | None"] = ContextVar("lora_ui_token_substitution", default=None)


@contextmanager
def token_substitution(hook: "TokenSubstitution | None") -> Iterator[None]:
    """Encode with `hook` active (None: plain encoding) for the code run inside the `with`."""
    token = _SUBSTITUTION.set(hook)
    try:
        yield
    finally:
        _SUBSTITUTION.reset(token)


@contextmanager
def _fixed_embeddings(text_encoder, batch_fixes: list[list[tuple[int, Any]]]) -> Iterator[None]:
    """While encoding one chunk batch: row r's token embeddings from position offset+1 (after BOS) are
    the hook's vectors (A1111's EmbeddingsWithFixes). No fixes: nothing is patched."""
    hook = _SUBSTITUTION.get()
    if hook is None or not any(batch_fixes):
        yield
        return
    table = text_encoder.get_input_embeddings()
    had_own = "forward" in table.__dict__
    previous = table.forward

    def forward(ids):
        out = previous(ids).clone()
        for row, fixes in enumerate(batch_fixes):
            for offset, key in fixes:
                vec = hook.vectors(key, text_encoder).to(out.device, out.dtype)
                n = max(0, min(vec.shape[0], out.shape[1] - offset - 1))
                out[row, offset + 1:offset + 1 + n] = vec[:n]
        return out

    table.forward = forward
    try:
        yield
    finally:
        if had_own:
            table.forward = previous
        else:
            table.__dict__.pop("forward", None)


@dataclass
class PromptChunk:
    """77 token ids ([BOS] + 75 + [EOS]) and their 77 weights; fixes: (offset after BOS, embedding key)
    of embeddings placed in this chunk (their positions hold token 0 as placeholders, as in A1111)."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, Any]] = field(default_factory=list)


def _comma_id(tokenizer) -> int | None:
    """The id of ",</w>" (None when the vocabulary has none), looked up without `get_vocab()`, which
    copies the whole vocabulary (~40 ms for CLIP's 49k tokens: it was paid for every prompt encoded)."""
    token_id = tokenizer.convert_tokens_to_ids(",</w>")
    unk = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or (token_id == unk and tokenizer.convert_ids_to_tokens(token_id) != ",</w>"):
        return None
    return int(token_id)


def tokenize_chunks(tokenizer, prompt: str) -> list[PromptChunk]:
    """Prompt -> chunks of 77 ids and weights, exactly as A1111's tokenize_line. Embeddings - those of an
    active token_substitution hook (textual inversion files) and a LoRA's bundled ones (`bundle_emb.*`,
    installed by lora.embeddings.EmbeddingSet as added tokens) - give all their vectors, kept in one chunk
    when they fit one (A1111: an embedding that does not fit starts the next chunk)."""
    from lora_ui.lora.embeddings import EMBEDDING_IDS_ATTR

    hook = _SUBSTITUTION.get()
    parsed = parse_prompt_attention(prompt)
    texts = [t for t, _ in parsed]
    ids_per_segment = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = _comma_id(tokenizer)
    groups = getattr(tokenizer, EMBEDDING_IDS_ATTR, None) or {}

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
        position = 0
        while position < len(ids):
            token = ids[position]
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
            found = hook.find(tokenizer, ids, position) if hook is not None else None
            unit = groups.get(token) if found is None else None
            if found is None and unit is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            if unit is not None:  # a bundled embedding: its own added token ids, one per vector
                if len(chunk.tokens) + len(unit) > CHUNK_LENGTH:
                    next_chunk()
                for vector_token in unit:
                    if len(chunk.tokens) == CHUNK_LENGTH:
                        next_chunk()
                    chunk.tokens.append(vector_token)
                    chunk.multipliers.append(weight)
                position += 1
                continue
            key, span, vectors = found
            if len(chunk.tokens) + vectors > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), key))
            chunk.tokens += [0] * vectors
            chunk.multipliers += [weight] * vectors
            position += span
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """A1111 "Original" emphasis. z: (B, 77, D), multipliers: (B, 77) -> (B, 77, D), in fp32.

    The means are over the whole batch (all B rows together, as A1111 encodes a prompt's edit
    variants in one batch). counts (B,): how often each row occurs in that batch (rows that repeat,
    e.g. alternation variants, are encoded once and weighted here); None = each row once."""
    z = z.float()
    weighted = z * multipliers.float().unsqueeze(-1)
    if counts is None:
        original_mean, new_mean, scale = z.mean(), weighted.mean(), z.abs().mean()
    else:
        w = counts.to(z.device, torch.float64) / counts.sum()

        def mean(t):
            return (t.double().mean(dim=(1, 2)) * w).sum().float()

        original_mean, new_mean, scale = mean(z), mean(weighted), mean(z.abs())
    # A mean near zero (an untrained final layer norm has bias 0) would turn the rescale into inf/NaN;
    # real CLIP hidden states have a clearly non-zero mean, so this only guards degenerate models.
    if not torch.isfinite(original_mean / new_mean) or new_mean.abs() < 1e-4 * scale:
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


def _pad_after_eos(tokens: list[int], tokenizer, pad_id: int | None) -> list[int]:
    """SDXL's second encoder: everything after the first EOS becomes `pad_id`."""
    if pad_id is None or pad_id == tokenizer.eos_token_id:
        return list(tokens)
    first_eos = tokens.index(tokenizer.eos_token_id)
    return tokens[:first_eos + 1] + [pad_id] * (len(tokens) - first_eos - 1)


def encode_texts_with_encoder(text_encoder, tokenizer, texts: list[str], *, hidden_index: int | None,
                              final_norm: bool, pad_id: int | None = None, counts: torch.Tensor | None = None):
    """One encoder, texts encoded as one batch the A1111 way -> (z (n, 77*k, D), pooled (n, P) or None).

    k = the largest chunk count; shorter texts get empty-prompt chunks appended (A1111 pads a batch
    of texts this way). Chunk i of all texts goes through the encoder together and gets the emphasis
    rescale with the mean over that (n, 77, D) batch; counts (n,) weights rows that stand for several
    identical texts (see apply_emphasis). Pooled is chunk 0's."""
    device, dtype = text_encoder.device, text_encoder.dtype
    per_text = [tokenize_chunks(tokenizer, t) for t in texts]
    empty = tokenize_chunks(tokenizer, "")[0]
    zs, pooled = [], None
    for i in range(max(len(chunks) for chunks in per_text)):
        batch = [chunks[i] if i < len(chunks) else empty for chunks in per_text]
        ids = torch.tensor([_pad_after_eos(c.tokens, tokenizer, pad_id) for c in batch], dtype=torch.long,
                           device=device)
        with _fixed_embeddings(text_encoder, [c.fixes for c in batch]):
            z, chunk_pooled = _encode_chunk(text_encoder, ids, hidden_index=hidden_index, final_norm=final_norm)
        mults = torch.tensor([c.multipliers for c in batch], device=device)
        zs.append(apply_emphasis(z, mults, counts).to(dtype))
        if i == 0:
            pooled = chunk_pooled
    return torch.cat(zs, dim=1), pooled


def encode_with_encoder(text_encoder, tokenizer, prompt: str, *, hidden_index: int | None,
                        final_norm: bool, pad_id: int | None = None):
    """One encoder: prompt -> (z (1, 77*n, D) with emphasis, pooled of chunk 0 (1, P) or None)."""
    return encode_texts_with_encoder(text_encoder, tokenizer, [prompt], hidden_index=hidden_index,
                                     final_norm=final_norm, pad_id=pad_id)


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


def _encode_sd1_texts(pipe, texts: list[str], clip_skip: int, counts: torch.Tensor | None = None):
    """SD1 batch of texts -> (z (n, 77*k, 768), None)."""
    hidden_index, final_norm = (-clip_skip, True) if clip_skip > 1 else (None, False)
    return encode_texts_with_encoder(pipe.text_encoder, pipe.tokenizer, texts, hidden_index=hidden_index,
                                     final_norm=final_norm, counts=counts)[0], None


def _encode_sdxl_texts(pipe, texts: list[str], counts: torch.Tensor | None = None):
    """SDXL batch of texts -> (z (n, 77*k, D1+D2), pooled (n, P)); clip skip is ignored (A1111)."""
    z1, _ = encode_texts_with_encoder(pipe.text_encoder, pipe.tokenizer, texts, hidden_index=-2,
                                      final_norm=False, counts=counts)
    z2, pooled = encode_texts_with_encoder(pipe.text_encoder_2, pipe.tokenizer_2, texts, hidden_index=-2,
                                           final_norm=False, pad_id=pipe.tokenizer_2.pad_token_id, counts=counts)
    return torch.cat([z1, z2], dim=-1), pooled


def _encode_sd1(pipe, prompt: str, clip_skip: int):
    return _encode_sd1_texts(pipe, [prompt], clip_skip)


def _encode_sdxl(pipe, prompt: str):
    return _encode_sdxl_texts(pipe, [prompt])


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


# ------------------------------------------------------------------------------------------------
# Prompt editing / alternation / AND -> StepConds (A1111 1.10, reference §4, §6)
# ------------------------------------------------------------------------------------------------

def _texts_encoder(pipe, arch: str, clip_skip: int):
    """(texts, counts) -> (z (n, 77*k, D), pooled (n, P) or None) for the pipeline's architecture."""
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
    if arch == "sd1":
        return lambda texts, counts=None: _encode_sd1_texts(pipe, texts, clip_skip, counts)
    if arch == "sdxl":
        return lambda texts, counts=None: _encode_sdxl_texts(pipe, texts, counts)
    raise ValueError(f"Unknown architecture {arch!r}; expected 'sd1' or 'sdxl'.")


def _encode_schedule(encode, schedule: list[tuple[int, str]], zero: bool) -> list[Cond]:
    """One prompt's schedule -> one Cond per entry. Its variant texts are encoded as one batch (equal
    chunk counts, shared emphasis rescale); each distinct text goes through the encoder once.
    zero: SDXL empty negative -> all-zero embeddings and pooled (one chunk)."""
    texts = [text for _, text in schedule]
    unique = list(dict.fromkeys(texts))
    counts = torch.tensor([texts.count(t) for t in unique], dtype=torch.float64)
    z, pooled = encode(unique, counts)
    if zero:
        z, pooled = torch.zeros_like(z[:, :CHUNK_LENGTH + 2]), torch.zeros_like(pooled)
    conds = {t: Cond(z[i:i + 1], None if pooled is None else pooled[i:i + 1]) for i, t in enumerate(unique)}
    return [conds[t] for t in texts]


@dataclass(frozen=True)
class _Scheduled:
    """One prompt's conditioning over the steps: entry i is used up to (and including) ends[i]."""

    ends: tuple[int, ...]
    conds: tuple[Cond, ...]

    def at(self, call: int) -> Cond:
        return self.conds[index_at_call(list(self.ends), call)]


def _repeat_last(embeds: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - embeds.shape[1]
    return torch.cat([embeds, embeds[:, -1:].repeat(1, missing, 1)], dim=1) if missing > 0 else embeds


def _pad_call(images: list[ImageConds], empty: torch.Tensor) -> list[ImageConds]:
    """A1111's "Pad conds" (pad_cond_uncond) for one call: the shorter side (cond batch or uncond)
    gets empty-prompt 77-blocks. The cond batch is as long as its longest term; when it is the shorter
    side, a shorter term first repeats its last vector up to that length (as A1111's cond stacking
    does) and then gets the empty blocks. empty: (1, 77, D)."""
    lc = max(c.length for im in images for c, _ in im.terms)
    lu = max(im.uncond.length for im in images)

    def pad(cond: Cond, length: int) -> Cond:
        if cond.length >= length:
            return cond
        blocks = [empty] * ((length - cond.length) // empty.shape[1])
        return Cond(torch.cat([cond.embeds, *blocks], dim=1), cond.pooled)

    if lc > lu:
        return [ImageConds(im.terms, pad(im.uncond, lc)) for im in images]
    if lu > lc:
        return [ImageConds(tuple((pad(Cond(_repeat_last(c.embeds, lc), c.pooled), lu), w) for c, w in im.terms),
                           im.uncond) for im in images]
    return images


@dataclass(frozen=True)
class ScheduledConds:
    """A StepConds: call index -> one ImageConds per image. images[i] = (((scheduled, weight), ...),
    scheduled negative); pad_empty: the empty prompt's embeds (1, 77, D) when "Pad conds" is on."""

    images: tuple
    pad_empty: torch.Tensor | None = None

    def __call__(self, call: int) -> list[ImageConds]:
        out = [ImageConds(tuple((s.at(call), w) for s, w in terms), neg.at(call)) for terms, neg in self.images]
        return out if self.pad_empty is None else _pad_call(out, self.pad_empty)


@torch.no_grad()
def encode_step_conds(pipe, arch: str, prompts: list[str], negative_prompts: list[str] | str, steps: int, *,
                      clip_skip: int = 1, pad_conds: bool = False, hires_base_steps: int | None = None,
                      old_timelines: bool = False) -> ScheduledConds:
    """Encode a batch of prompts (one per image) with A1111's editing, alternation and AND -> StepConds.

    prompts: B positive prompts, split on AND (weights kept, terms in order); negative_prompts: B
    prompts (or one for all), editing only. steps: the count the prompts are scheduled over (A1111
    doubles the sampling steps for second-order samplers; pass it already scaled). Denoiser call c
    uses each schedule's first entry with c <= end (prompt_schedule.index_at_call).

    Encoding, as A1111's get_learned_conditioning: every distinct (sub)prompt is encoded once, the
    texts of its schedule together as one batch: they get the same chunk count (shorter variants get
    empty-prompt chunks appended) and, with emphasis "Original", chunk i of every variant is rescaled
    by mean(z)/mean(z*w) taken over the whole batch of variants (texts x 77 x D) - not per variant.
    Different prompts are encoded separately. Cond.embeds are (1, 77*k, D); SDXL keeps the pooled
    output of encoder 2 (chunk 0); an SDXL negative whose texts are all "" is all zeros when the
    pipeline's `force_zeros_for_empty_prompt` is set (as encode_prompts).

    Chunk counts may differ between terms, images and the negative: no padding (A1111's default).
    pad_conds=True is A1111's "Pad conds": see _pad_call."""
    negatives = [negative_prompts] * len(prompts) if isinstance(negative_prompts, str) else list(negative_prompts)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    encode = _texts_encoder(pipe, arch, clip_skip)
    zero_empty_negative = arch == "sdxl" and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    cache: dict[tuple[str, bool], _Scheduled] = {}

    def scheduled(prompt: str, negative: bool) -> _Scheduled:
        if (prompt, negative) not in cache:
            schedule = get_schedule(prompt, steps, hires_base_steps=hires_base_steps, old_timelines=old_timelines)
            zero = negative and zero_empty_negative and all(text == "" for _, text in schedule)
            conds = _encode_schedule(encode, schedule, zero)
            cache[(prompt, negative)] = _Scheduled(tuple(e for e, _ in schedule), tuple(conds))
        return cache[(prompt, negative)]

    images = tuple((tuple((scheduled(text, False), w) for text, w in split_and(p)), scheduled(n, True))
                   for p, n in zip(prompts, negatives))
    return ScheduledConds(images, encode([""])[0] if pad_conds else None)
