"""The translation recipe trains on the loss its config names: label smoothing as set.

tests/test_seq2seq_train.py checks `label_smoothed_loss` against its formula; this checks
that the recipe, the code the trainer calls, passes it `train.label_smoothing` (a recipe
that silently trained with epsilon = 0 would pass every formula test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkv.config.choices import PAD_ID
from qkv.config.seq2seq import Seq2SeqRunConfig
from qkv.training.translation import TranslationRecipe


def copy_recipe(label_smoothing: float) -> TranslationRecipe:
    settings = {
        "model.n_encoder_layer": 1, "model.n_decoder_layer": 1, "model.n_embd": 32,
        "model.n_head": 2, "model.d_ff": 64, "model.max_len": 12, "data.source": "copy",
        "data.n_train": 64, "data.n_val": 8, "data.n_test": 8, "data.synthetic_len": 5,
        "train.batch_size": 16, "train.device": "cpu", "train.seed": 0,
        "train.label_smoothing": label_smoothing,
    }  # fmt: skip
    config = Seq2SeqRunConfig().with_values(settings)
    return TranslationRecipe(config, None, torch.device("cpu"))


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_the_recipes_loss_is_cross_entropy_smoothed_by_the_configs_epsilon(epsilon):
    recipe = copy_recipe(epsilon)
    torch.manual_seed(0)
    model = recipe.build_model().eval()
    batch, n_targets = recipe.next_batch()
    src, tgt_in, tgt_out = batch
    assert n_targets == int((tgt_out != PAD_ID).sum())
    logits = model(src, tgt_in)  # (B, T, V)
    real = tgt_out != PAD_ID
    # q = (1 - eps) onehot(y) + eps / V, scored on real target tokens only
    log_p = torch.log_softmax(logits[real], dim=-1)  # (N, V)
    smoothed = -(1 - epsilon) * log_p.gather(1, tgt_out[real][:, None]).squeeze(1)
    smoothed = smoothed - epsilon * log_p.mean(-1)
    with torch.no_grad():
        loss = recipe.loss(model, batch)
    torch.testing.assert_close(loss, smoothed.mean())
    plain = F.cross_entropy(logits[real], tgt_out[real])
    assert (loss - plain).abs() > 1e-3  # smoothing changes the loss the model trains on
