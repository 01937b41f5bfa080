"""Turning a source sentence into a target sentence: greedy decoding and beam search.

Shape legend: B batch (source sentences), K beam size, V vocabulary, t decoding step.

Both work on any model with `start_decoding(src, beams, use_cache)` (see
`Seq2SeqTransformer.start_decoding`), whose session maps the newest token of each hypothesis
to the next token's logits and can reorder its hypotheses. <pad> and <bos> are never
generated; a hypothesis ends at <eos>.

Beam search (the paper, section 6.1: beam size 4, length penalty alpha = 0.6) keeps the K
best partial translations of each sentence by log-probability. A finished hypothesis Y is
scored with GNMT's length penalty (Wu et al., 2016, section 7):

    s(Y) = log P(Y | X) / lp(Y),     lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha

|Y| counts the target tokens including <eos>. Without it, shorter outputs would win just for
having fewer probabilities below one in the product. At each step the 2K best extensions are
ranked; an <eos> among the first K finishes a hypothesis, and the first K others stay alive
(fairseq's rule: dropping a finished one never leaves fewer than K alive). A sentence is done
when K hypotheses have finished, and the best-scoring finished one is its translation. With
K = 1 that is exactly greedy decoding (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qkv.config.choices import BOS_ID, EOS_ID, PAD_ID
from qkv.errors import QkvError


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha."""
    return ((5 + length) / 6) ** alpha


def next_log_probs(logits: Tensor) -> Tensor:
    """log-softmax over the tokens a decoder may produce: never <pad> or <bos>. (N, V)."""
    logits = logits.float().clone()
    logits[:, [PAD_ID, BOS_ID]] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def _steps(session, max_len: int | None) -> int:
    return session.max_steps if max_len is None else min(max_len, session.max_steps)


@torch.inference_mode()
def greedy_decode(
    model, src: Tensor, max_len: int | None = None, use_cache: bool = True
) -> list[list[int]]:
    """The most likely next token at each step, for every sentence of src (B, S) at once.

    Returns the target ids of each sentence, without <eos>; at most `max_len` tokens
    (default: as many as the model has positions).
    """
    session = model.start_decoding(src, beams=1, use_cache=use_cache)
    last = torch.full((src.size(0), 1), BOS_ID, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    tokens = []
    for _ in range(_steps(session, max_len)):
        token = next_log_probs(session.step(last)).argmax(dim=-1)  # (B,)
        token = token.masked_fill(done, PAD_ID)
        tokens.append(token)
        done |= token == EOS_ID
        if bool(done.all()):
            break
        last = token[:, None]
    if not tokens:
        return [[] for _ in range(src.size(0))]
    return [_until_eos(row) for row in torch.stack(tokens, dim=1).tolist()]


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else [i for i in ids if i != PAD_ID]


class _Finished:
    """The best finished hypothesis of each sentence so far, and how many have finished."""

    def __init__(self, batch: int) -> None:
        self.best: list[list[int]] = [[] for _ in range(batch)]
        self.score = [float("-inf")] * batch
        self.count = [0] * batch

    def add(self, sentence: int, ids: list[int], score: float) -> None:
        self.count[sentence] += 1
        if score > self.score[sentence]:
            self.best[sentence], self.score[sentence] = ids, score


@torch.inference_mode()
def beam_search(
    model,
    src: Tensor,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len: int | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Beam search with GNMT's length penalty for every sentence of src (B, S) at once.

    Returns each sentence's best finished hypothesis (ids without <eos>); see the module
    docstring for the rules.
    """
    if beam_size < 1:
        raise QkvError(f"beam size must be >= 1, got {beam_size}")
    if alpha < 0:
        raise QkvError(f"length penalty alpha must be >= 0, got {alpha}")
    b, k = src.size(0), beam_size
    device = src.device
    session = model.start_decoding(src, beams=k, use_cache=use_cache)
    scores = torch.full((b, k), float("-inf"), device=device)  # (B, K) log P of alive beams
    scores[:, 0] = 0.0  # all K start as the same <bos>: expand only one of them at first
    seqs = torch.empty((b * k, 0), dtype=torch.long, device=device)  # (B K, t)
    last = torch.full((b * k, 1), BOS_ID, dtype=torch.long, device=device)
    finished = _Finished(b)
    done = torch.zeros(b, dtype=torch.bool)
    steps = _steps(session, max_len)
    for t in range(1, steps + 1):
        log_p = next_log_probs(session.step(last))  # (B K, V)
        vocab = log_p.size(-1)
        candidates = (scores[:, :, None] + log_p.view(b, k, vocab)).view(b, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2K)
        beam, token = top_index // vocab, top_index % vocab  # (B, 2K) each
        is_eos = token == EOS_ID
        _finish(finished, done, seqs, top_scores, beam, is_eos, k, length_penalty(t, alpha))
        done |= torch.tensor([c >= k for c in finished.count])
        if bool(done.all()):
            break
        # the first K candidates that are not <eos> stay alive
        rank = is_eos.long() * top_index.size(1) + torch.arange(top_index.size(1), device=device)
        keep = rank.argsort(dim=1)[:, :k]  # (B, K)
        scores = top_scores.gather(1, keep)
        order = (torch.arange(b, device=device)[:, None] * k + beam.gather(1, keep)).view(-1)
        last = token.gather(1, keep).view(-1, 1)  # (B K, 1)
        seqs = torch.cat([seqs.index_select(0, order), last], dim=1)  # (B K, t)
        session.reorder(order)
        if t == steps:  # out of positions: the alive beams end here, without <eos>
            _finish_alive(finished, done, seqs, scores, length_penalty(t, alpha))
    return finished.best


def _finish(finished, done, seqs, top_scores, beam, is_eos, k, penalty) -> None:
    """Record the <eos> extensions ranked among the first K of an unfinished sentence."""
    in_first_k = torch.arange(top_scores.size(1), device=top_scores.device) < k
    final = is_eos & in_first_k & torch.isfinite(top_scores) & ~done[:, None].to(is_eos.device)
    for sentence, j in final.nonzero().tolist():
        row = sentence * k + int(beam[sentence, j])
        score = float(top_scores[sentence, j]) / penalty
        finished.add(sentence, seqs[row].tolist(), score)


def _finish_alive(finished, done, seqs, scores, penalty) -> None:
    k = scores.size(1)
    for sentence in range(scores.size(0)):
        if bool(done[sentence]):
            continue
        for j in range(k):
            if torch.isfinite(scores[sentence, j]):
                ids = seqs[sentence * k + j].tolist()
                finished.add(sentence, ids, float(scores[sentence, j]) / penalty)


def translate_ids(
    model,
    src: Tensor,
    beam_size: int = 1,
    alpha: float = 0.6,
    max_len: int | None = None,
) -> list[list[int]]:
    """Greedy decoding for beam size 1, beam search otherwise."""
    if beam_size == 1:
        return greedy_decode(model, src, max_len)
    return beam_search(model, src, beam_size, alpha, max_len)
