"""`qkv attention --explain`: one head's computation printed as aligned tables.

The steps and their equations are those of viz/explain.py (the paper, section 3.2, eq. 1):
x_i, the head's W_Q, W_K, W_V, the vectors q_i, k_j, v_j, the raw scores e_ij = q_i . k_j,
the scaled scores e_ij / sqrt(D), the mask, the softmax weights a_ij (rows sum to 1), the
weighted sum o_i = sum_j a_ij v_j, and the head's share W_O^h o_i of the sub-layer's output.
Wide matrices show their first and last columns (and rows), with the elided count.
"""

from __future__ import annotations

import numpy as np

from qkv.viz.explain import HeadSteps
from qkv.viz.style import display_token

MAX_TOKENS = 16  # --explain prints T x T tables: beyond this they no longer fit a terminal
MAX_COLS, HEAD_COLS = 8, 6  # wider matrices show HEAD_COLS first columns, ..., the last one
MAX_ROWS, HEAD_ROWS = 6, 4
ELIDED = "\u2026"
HIDDEN = "-inf"


def _keep(n: int, most: int, first: int) -> list[int | None]:
    """Indices shown of n: all of them, or the first ones, None (the gap), the last one."""
    if n <= most:
        return list(range(n))
    return [*range(first), None, n - 1]


def table(
    values: np.ndarray,
    row_labels: list[str],
    col_labels: list[str],
    digits: int = 3,
    cells: np.ndarray | None = None,
    *,
    all_columns: bool = False,
    all_rows: bool = True,
) -> list[str]:
    """Aligned lines: a header of column labels, then one labelled row per row of values.

    Wide matrices keep their first and last columns (all of them with `all_columns`), tall
    ones (unless `all_rows`) their first and last rows. `cells` (same shape, strings)
    replaces the numbers where given (the mask's "-inf").
    """
    cols = _keep(values.shape[1], 10**9 if all_columns else MAX_COLS, HEAD_COLS)
    rows = _keep(values.shape[0], 10**9 if all_rows else MAX_ROWS, HEAD_ROWS)

    def cell(i: int, j: int | None) -> str:
        if j is None:
            return ELIDED
        if cells is not None and cells[i, j]:
            return str(cells[i, j])
        return f"{values[i, j]:.{digits}f}"

    body = [[cell(i, j) for j in cols] if i is not None else [ELIDED] * len(cols) for i in rows]
    header = [ELIDED if j is None else col_labels[j] for j in cols]
    width = max(len(s) for s in [*header, *(c for r in body for c in r)])
    labels = [ELIDED if i is None else row_labels[i] for i in rows]
    label_width = max(len(s) for s in labels)
    lines = [" " * label_width + "".join(f" {h:>{width}}" for h in header)]
    for label, row in zip(labels, body, strict=True):
        lines.append(f"{label:<{label_width}}" + "".join(f" {c:>{width}}" for c in row))
    return lines


def _token_labels(tokens: list[str]) -> list[str]:
    return [f"{n:>2} {display_token(t)}" for n, t in enumerate(tokens)]


def _numbers(n: int, prefix: str = "") -> list[str]:
    return [f"{prefix}{n}" for n in range(n)]


def _shape(values: np.ndarray) -> str:
    return " x ".join(str(n) for n in values.shape)


def _section(title: str, lines: list[str]) -> list[str]:
    return ["", title, *("  " + line for line in lines)]


def explain_lines(steps: HeadSteps, model_note: str = "", norm: str = "pre") -> list[str]:
    """The whole worked example for one head, as lines of text (`norm`: where the block's
    norm sits, which says what the sub-layer's input x_i is)."""
    s = steps
    d = s.head_size
    rows, keys = _token_labels(s.queries), _token_labels(s.keys)
    key_cols = [display_token(t) for t in s.keys]
    cross = s.name == "cross-attention"
    out = [
        f"{s.name}, layer {s.layer}, head {s.head}: {len(s.queries)} queries x {len(s.keys)} "
        f"keys, C = {s.x.shape[1]} channels, head size D = {d}{model_note}",
    ]
    out += _section(
        f"1. x_i, the input of the attention sub-layer at each query ({_shape(s.x)}; "
        + (
            "pre-norm: LayerNorm of the residual stream)"
            if norm == "pre"
            else "post-norm: the residual stream itself)"
        ),
        table(s.x, rows, _numbers(s.x.shape[1], "c")),
    )
    if cross:
        out += _section(
            f"   z_j, the encoder's output at each source key ({_shape(s.z)})",
            table(s.z, keys, _numbers(s.z.shape[1], "c")),
        )
    src = "z_j" if cross else "x_j"
    for part, w, b in (("q", s.w_q, s.b_q), ("k", s.w_k, s.b_k), ("v", s.w_v, s.b_v)):
        first, end = s.rows[part]
        out += _section(
            f"2. W_{part.upper()} of head {s.head}: rows {first}-{end - 1} of c_attn.weight "
            f"({_shape(w)})" + ("" if b is None else ", and the bias rows"),
            table(w, _numbers(d, "d"), _numbers(w.shape[1], "c"), all_rows=False)
            + ([] if b is None else table(b[None, :], ["bias"], _numbers(d, "d"))),
        )
    rotated = " then rotated by position i (rotary)" if s.rotary else ""
    for name, formula, values, labels in (
        ("q_i", f"W_Q x_i + b_Q{rotated}", s.q, rows),
        ("k_j", f"W_K {src} + b_K{rotated.replace(' i ', ' j ')}", s.k, keys),
        ("v_j", f"W_V {src} + b_V", s.v, keys),
    ):
        out += _section(
            f"3. {name} = {formula} ({_shape(values)})", table(values, labels, _numbers(d, "d"))
        )
    hidden = np.where(s.mask, "", HIDDEN)
    out += _section(
        f"4. raw scores e_ij = q_i . k_j ({_shape(s.scores)}; rows: queries i, columns: keys j)",
        table(s.scores, rows, key_cols, 3, all_columns=True),
    )
    out += _section(
        f"5. scaled: e_ij / sqrt(D) = e_ij / {np.sqrt(d):.3f} = e_ij x {s.scale:.4f}",
        table(s.scaled, rows, key_cols, 3, all_columns=True),
    )
    rule = (
        "key j visible to query i iff j <= i (causal)" if not s.mask.all() else "every key visible"
    )
    out += _section(f"6. the mask: {rule}; hidden scores become -inf", table(
        s.scaled, rows, key_cols, 3, cells=hidden, all_columns=True))  # fmt: skip
    with_sum = np.concatenate([s.weights, s.weights.sum(1, keepdims=True)], axis=1)
    out += _section(
        "7. a_ij = softmax over j of the masked scores (each row sums to 1)",
        table(with_sum, rows, [*key_cols, "sum"], 3, all_columns=True),
    )
    out += _section(
        f"8. o_i = sum_j a_ij v_j, the head's output ({_shape(s.out)})",
        table(s.out, rows, _numbers(d, "d")),
    )
    out += _section(
        f"9. W_O of head {s.head}: columns {s.head * d}-{(s.head + 1) * d - 1} of c_proj.weight "
        f"({_shape(s.w_o)}); the head's share W_O o_i ({_shape(s.share)})",
        table(s.share, rows, _numbers(s.share.shape[1], "c")),
    )
    out += _section(
        "   the sub-layer's output: every head's share summed, plus b_O",
        table(s.output, rows, _numbers(s.output.shape[1], "c")),
    )
    return out
