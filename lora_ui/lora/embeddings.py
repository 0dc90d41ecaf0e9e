"""Textual-inversion embeddings bundled in LoRA files (``bundle_emb.*``), active while the LoRA is.

Nothing of the base model is modified, so removal is exact:
- the pipeline's tokenizer is swapped for a copy that knows the new tokens (``name``, ``name_1``,
  ... one per vector, diffusers' convention, so ``maybe_convert_prompt`` expands ``name``; the app's
  own prompt encoder expands it through ``EMBEDDING_IDS_ATTR``), and the original object is put back
  on removal;
- the text encoder's token-embedding module gets an instance forward that looks ids past the
  original vocabulary up in the bundled vectors (the embedding matrix is never resized or written).

An embedding whose name is already a token of the tokenizer is skipped with a warning (it would
change what an ordinary word means).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spec import LoraError

_PAIRS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))

# Attribute of an installed tokenizer copy: {id of `name`: [ids of name, name_1, ...]} for every bundled
# embedding. The app's prompt encoder (engine.conditioning.tokenize_chunks) replaces the one token a
# prompt's `name` becomes with all the embedding's vectors, never split across two 75-token chunks
# (A1111's rule); without it only the first vector would reach the text encoder.
EMBEDDING_IDS_ATTR = "lora_ui_embedding_ids"


def token_names(name: str, n_vectors: int) -> list[str]:
    """Tokens of an n-vector embedding: name, name_1, ..., name_{n-1}."""
    return [name] + [f"{name}_{i}" for i in range(1, n_vectors)]


@dataclass
class EmbeddingPlan:
    """What to install: per (encoder, tokenizer) pair the new tokenizer and the extra vectors
    (n_new, hidden) in token-id order; `wanted` is the signature for change detection."""

    wanted: tuple
    tokenizers: dict[str, object] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)
    active_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class EmbeddingSet:
    """The bundled embeddings currently active on one pipeline."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.original_tokenizers: dict[str, object] = {}
        self.patched_modules: dict[str, nn.Embedding] = {}
        self.signature: tuple = ()
        self.active_names: list[str] = []

    @staticmethod
    def _signature(embeddings: dict[str, dict[str, Tensor]]) -> tuple:
        return tuple(sorted((name, comp, id(t)) for name, vecs in embeddings.items() for comp, t in vecs.items()))

    def plan(self, embeddings: dict[str, dict[str, Tensor]]) -> EmbeddingPlan | None:
        """Validate and prepare `embeddings` (name -> {encoder component: (n, hidden)}) without
        touching the pipeline. None when nothing changes. Raises LoraError on a width mismatch."""
        signature = self._signature(embeddings)
        if signature == self.signature:
            return None
        plan = EmbeddingPlan(signature)
        for encoder_name, tokenizer_name in _PAIRS:
            encoder = getattr(self.pipe, encoder_name, None)
            tokenizer = self.original_tokenizers.get(tokenizer_name, getattr(self.pipe, tokenizer_name, None))
            if encoder is None or tokenizer is None:
                continue
            items = [(name, vecs[encoder_name]) for name, vecs in embeddings.items() if encoder_name in vecs]
            if not items:
                continue
            table = encoder.get_input_embeddings()
            vocab = table.num_embeddings
            hidden = table.embedding_dim
            new_tokenizer = copy.deepcopy(tokenizer)
            vectors = []
            added_tokens: list[str] = []
            groups: list[list[str]] = []
            for name, vec in items:
                if vec.shape[-1] != hidden:
                    raise LoraError(f"bundled embedding '{name}' has vectors of width {vec.shape[-1]}, "
                                    f"the {encoder_name} expects {hidden}; first offending keys: bundle_emb.{name}")
                tokens = token_names(name, vec.shape[0])
                clash = [t for t in tokens if t in tokenizer.get_vocab()]
                if clash:
                    plan.warnings.append(f"bundled embedding '{name}' skipped: '{clash[0]}' is already a token")
                    continue
                added = new_tokenizer.add_tokens(tokens)
                if added != len(tokens):
                    plan.warnings.append(f"bundled embedding '{name}' skipped: its tokens could not be added")
                    continue
                vectors.append(vec.reshape(-1, hidden))
                added_tokens += tokens
                groups.append(tokens)
                if name not in plan.active_names:
                    plan.active_names.append(name)
            if not vectors:
                continue
            extra = torch.cat(vectors).to(device=table.weight.device, dtype=table.weight.dtype)
            ids = new_tokenizer.convert_tokens_to_ids(added_tokens)
            if list(ids) != list(range(vocab, vocab + len(added_tokens))):
                # Row i of `extra` must be token id vocab + i; a tokenizer larger than the table breaks that.
                raise LoraError(f"bundled embeddings {', '.join(plan.active_names)}: the {tokenizer_name} has "
                                f"{len(tokenizer)} tokens but the {encoder_name} table has {vocab} rows")
            # The prompt encoder (engine.conditioning.tokenize_chunks) writes `name` as all its vectors.
            setattr(new_tokenizer, EMBEDDING_IDS_ATTR,
                    {ids[added_tokens.index(g[0])]: [ids[added_tokens.index(t)] for t in g] for g in groups})
            plan.tokenizers[tokenizer_name] = new_tokenizer
            plan.extra[encoder_name] = extra
        return plan

    def commit(self, plan: EmbeddingPlan | None) -> None:
        """Swap the planned tokenizers/embedding lookups in (and the previous ones out)."""
        if plan is None:
            return
        self._remove()
        for (encoder_name, tokenizer_name) in _PAIRS:
            if tokenizer_name not in plan.tokenizers:
                continue
            self.original_tokenizers[tokenizer_name] = getattr(self.pipe, tokenizer_name)
            setattr(self.pipe, tokenizer_name, plan.tokenizers[tokenizer_name])
            table = getattr(self.pipe, encoder_name).get_input_embeddings()
            table.forward = _extended_lookup(table, plan.extra[encoder_name])
            self.patched_modules[encoder_name] = table
        self.signature = plan.wanted
        self.active_names = list(plan.active_names)

    def _remove(self) -> None:
        for tokenizer_name, tokenizer in self.original_tokenizers.items():
            setattr(self.pipe, tokenizer_name, tokenizer)
        for table in self.patched_modules.values():
            table.__dict__.pop("forward", None)
        self.original_tokenizers.clear()
        self.patched_modules.clear()
        self.signature = ()
        self.active_names = []


def _extended_lookup(table: nn.Embedding, extra: Tensor):
    """Embedding forward: ids < vocab from the table, ids >= vocab from `extra` (n_extra, hidden)."""
    vocab = table.num_embeddings

    def forward(ids: Tensor) -> Tensor:
        is_extra = ids >= vocab
        out = F.embedding(ids.clamp(max=vocab - 1), table.weight, table.padding_idx, table.max_norm,
                          table.norm_type, table.scale_grad_by_freq, table.sparse)
        if bool(is_extra.any()):
            out = out.clone()
            out[is_extra] = extra[ids[is_extra] - vocab].to(out.dtype)
        return out

    return forward
