"""Plant each bug the tests claim to catch, run the tests that should catch it, restore.

    python tools/mutants.py               # every mutant; exit 1 if one survives
    python tools/mutants.py --only scale  # one mutant, by name
    python tools/mutants.py --markdown    # the table in docs/testing.md

A mutant is one exact edit of one source line (`before` -> `after`), the way a slip of the
keyboard would break one of the notes' ideas. It is caught when every test named in
`caught_by` fails with it planted (pytest exit status 1: failures, not a collection error).
The source file is restored afterwards, also when the run is interrupted.

This is a small script of qkv's own rather than mutmut: mutmut mutates every line it can
and reports survivors in bulk, while this checks a named list of bugs against the named
tests that docs/testing.md says catch them, in about a minute.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = "src/qkv/"


@dataclass(frozen=True)
class Mutant:
    name: str  # short, for --only
    idea: str  # the notes' idea that the edit breaks
    path: str  # relative to the repository root
    before: str  # exact text, found once in the file
    after: str
    caught_by: tuple[str, ...]  # pytest node ids that must fail


ATTENTION, BLOCKS = SRC + "nn/attention.py", SRC + "nn/blocks.py"
NOTES, ATT, BLK = "tests/test_notes.py::", "tests/test_attention.py::", "tests/test_blocks.py::"
PARITY = "tests/test_reference_transformer.py::"
EXPLAIN = "tests/test_explain.py::"

MUTANTS = (
    Mutant(
        "scale", "scores scaled by 1/sqrt(d_k) (explicit path)", ATTENTION,
        "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)", "scores = q @ k.transpose(-2, -1)",
        (ATT + "test_explicit_path_is_the_formula_written_out",
         ATT + "test_scaling_keeps_the_softmax_from_saturating_on_one_key",
         PARITY + "test_encoder_layer_equals_torch_encoder_layer"),
    ),
    Mutant(
        "diagonal", "the causal mask keeps the diagonal (j <= i)", ATTENTION,
        "return key_pos <= query_pos", "return key_pos < query_pos",
        (ATT + "test_causal_mask_keeps_the_diagonal",
         ATT + "test_first_query_attends_only_to_itself"),
    ),
    Mutant(
        "residual", "the residual connection around self-attention", BLOCKS,
        "x, weights = self.residual(x, self.ln_1, attend)", "x, weights = attend(self.ln_1(x))",
        (BLK + "test_pre_norm_block_is_residual_around_normed_sublayers",
         BLK + "test_a_zeroed_block_is_the_identity_thanks_to_the_residual"),
    ),
    Mutant(
        "smoothing", "label smoothing with the config's epsilon (the recipe)",
        SRC + "training/translation.py",
        "tgt_out, self.config.train.label_smoothing)", "tgt_out, 0.0)",
        ("tests/test_translation_recipe.py::"
         "test_the_recipes_loss_is_cross_entropy_smoothed_by_the_configs_epsilon",),
    ),
    Mutant(
        "smoothing-loss", "label smoothing inside the loss function",
        SRC + "training/translation.py",
        "label_smoothing=epsilon,", "label_smoothing=0.0,",
        ("tests/test_seq2seq_train.py::test_label_smoothed_loss_matches_its_formula",),
    ),
    Mutant(
        "positions", "learned positions P added to the token embeddings (GPT)",
        SRC + "models/gpt.py",
        "x = x + self.transformer.wpe(positions)", "x = x + 0 * self.transformer.wpe(positions)",
        (NOTES + "test_learned_positions_p_are_added_once_to_the_token_embeddings",
         NOTES + "test_one_causal_layer_without_positions_sees_its_prefix_as_a_bag_of_tokens"),
    ),
    Mutant(
        "positions-seq2seq", "the paper's sinusoids added to the embeddings (encoder-decoder)",
        SRC + "models/seq2seq.py",
        "x = x + self.positions(positions)", "x = x + 0 * self.positions(positions)",
        (NOTES + "test_the_papers_sinusoids_are_added_to_the_scaled_source_embeddings",
         NOTES + "test_a_non_causal_stack_without_positions_is_permutation_equivariant",
         PARITY + "test_seq2seq_logits_equal_torch_transformer"),
    ),
    Mutant(
        "softmax-axis", "softmax over the keys (each query's weights sum to 1)", ATTENTION,
        "weights = torch.softmax(scores, dim=-1)", "weights = torch.softmax(scores, dim=-2)",
        (ATT + "test_weights_rows_sum_to_one_and_are_zero_on_masked_keys",
         NOTES + "test_stacked_attention_without_ffn_stays_in_the_convex_hull_of_the_values"),
    ),
    Mutant(
        "merge-heads", "heads concatenated in order before W_O", ATTENTION,
        "return x.transpose(1, 2).reshape(b, t, h * d)",
        "return x.permute(0, 2, 3, 1).reshape(b, t, h * d)",
        (ATT + "test_multi_head_attention_equals_torch_multihead_attention",
         ATT + "test_cross_attention_equals_torch_with_queries_from_x_and_keys_from_context",
         PARITY + "test_decoder_layer_equals_torch_decoder_layer"),
    ),
    Mutant(
        "fused-mask", "masks reach the fused kernel (padding hidden)", ATTENTION,
        "_fused_kernel(q, k, v, attn_mask=mask, dropout_p=dropout_p)",
        "_fused_kernel(q, k, v, dropout_p=dropout_p)",
        (ATT + "test_fused_path_equals_explicit_path",),
    ),
    Mutant(
        "gpt-causal", "the GPT masks the future", SRC + "models/gpt.py",
        "config.n_head, causal=True, rotary=rotary", "config.n_head, causal=False, rotary=rotary",
        ("tests/test_gpt.py::test_changing_later_tokens_leaves_earlier_logits_unchanged",),
    ),
    Mutant(
        "ffn-relu", "the FFN's non-linearity, W2 ReLU(W1 x + b1) + b2", BLOCKS,
        "self.c_proj(self.act(self.c_fc(x)))", "self.c_proj(self.c_fc(x))",
        (BLK + "test_feed_forward_matches_its_formula",),
    ),
    Mutant(
        "post-norm", "the paper's LayerNorm after each residual (post-norm)", BLOCKS,
        "return norm(x + out), weights", "return x + out, weights",
        (BLK + "test_post_norm_block_normalises_after_the_residual",
         PARITY + "test_encoder_layer_equals_torch_encoder_layer"),
    ),
    Mutant(
        "explain-scale", "--explain shows the scores scaled by 1/sqrt(D)", SRC + "viz/explain.py",
        "return 1.0 / math.sqrt(self.head_size)", "return 1.0",
        (EXPLAIN + "test_gpt_steps_equal_a_hand_computation_in_every_layer_and_head",
         EXPLAIN + "test_explain_prints_the_models_numbers_for_the_chosen_head"),
    ),
    Mutant(
        "explain-head", "--explain shows the head asked for", SRC + "viz/explain.py",
        "    return heads[head]", "    return heads[0]",
        (EXPLAIN + "test_explain_prints_the_models_numbers_for_the_chosen_head",
         EXPLAIN + "test_explain_on_a_seq2seq_checkpoint_shows_each_kind_of_attention"),
    ),
    Mutant(
        "explorer-scale", "the explorer's step view scales by 1/sqrt(D)",
        SRC + "viz/explorer.html",
        "const scale = 1 / Math.sqrt(m.head_size);", "const scale = 1;",
        ("tests/test_viz_browser.py::"
         "test_clicking_a_query_shows_its_computation_with_the_models_numbers",),
    ),
    Mutant(
        "int8-7bit", "fbgemm's int8 weights keep to 7 bits (AVX2 sums pairs in 16 bits)",
        SRC + "decoding/int8_layers.py",
        "weight_range = (-64, 63)", "weight_range = (-128, 127)",
        ("tests/test_int8_layers.py::test_fbgemms_sums_do_not_saturate_at_the_extremes",),
    ),
    Mutant(
        "int8-row-scale", "each int8 row is rescaled by its own s_n",
        SRC + "decoding/int8_layers.py",
        "return torch.addcmul(bias, y, scale)", "return torch.addcmul(bias, y, scale.mean())",
        ("tests/test_int8_layers.py::test_int8_linear_is_its_equation",),
    ),
    Mutant(
        "layout-tie", "a tied head laid out for decoding shares its W^T with the embedding",
        SRC + "decoding/layout.py",
        "TransposedEmbedding(layer.weight_t, ",
        "TransposedEmbedding(nn.Parameter(layer.weight_t.clone()), ",
        ("tests/test_decoding_layout.py::test_the_tied_head_stays_tied_and_nothing_is_stored_twice",),
    ),
)  # fmt: skip


def plant(mutant: Mutant) -> str:
    """Apply the edit; return the original text."""
    path = ROOT / mutant.path
    original = path.read_text(encoding="utf-8")
    if original.count(mutant.before) != 1:
        raise SystemExit(f"{mutant.name}: {mutant.before!r} is not once in {mutant.path}")
    path.write_text(original.replace(mutant.before, mutant.after), encoding="utf-8")
    return original


def failing_tests(mutant: Mutant) -> tuple[int, set[str]]:
    """Run the catching tests with the mutant planted: pytest's status and what failed."""
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider"]
    command += mutant.caught_by
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    failed = {
        line.split()[1].split("[")[0]
        for line in result.stdout.splitlines()
        if line.startswith("FAILED ")
    }
    return result.returncode, failed


def check(mutant: Mutant) -> list[str]:
    """The named tests that did not fail with the mutant planted (empty: caught)."""
    original = plant(mutant)
    try:
        status, failed = failing_tests(mutant)
    finally:
        (ROOT / mutant.path).write_text(original, encoding="utf-8")
    if status != 1:
        return [f"pytest exited {status} (1 means tests failed)"]
    return [node for node in mutant.caught_by if node not in failed]


def markdown() -> str:
    rows = ["| mutant | the idea broken | the edit | caught by |", "|---|---|---|---|"]
    for m in MUTANTS:
        tests = "<br>".join(f"`{node.split('/')[-1]}`" for node in m.caught_by)
        rows.append(f"| `{m.name}` | {m.idea} | `{m.before}` → `{m.after}` | {tests} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="print the table and stop")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(), end="")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # restore the file on SIGTERM
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    survivors = 0
    for mutant in chosen:
        missed = check(mutant)
        survivors += bool(missed)
        verdict = "caught" if not missed else "SURVIVED: " + "; ".join(missed)
        print(f"{mutant.name:18} {verdict}", flush=True)
    print(f"{len(chosen) - survivors}/{len(chosen)} mutants caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
