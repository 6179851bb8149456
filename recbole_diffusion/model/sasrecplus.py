r"""
SASRec+ (``--model=SASRec+``)
################################################

Reference:
    Anton Klenitskiy, Alexey Vasilev. "Turning Dross Into Gold Loss: is BERT4Rec
    really better than SASRec?" In RecSys 2023.

Reference code:
    https://github.com/antklen/sasrec-bert4rec-recsys23 (the paper's);
    the ADRec reference code (https://github.com/Nemo-1024/ADRec) ships the same
    model as its SASRec baseline.

SASRec+ is RecBole's SASRec architecture (item and learned positional
embeddings, LayerNorm and dropout, a causal Transformer encoder, scores as the
dot product of the last position's output with every item embedding) trained
the way the paper shows to be strongest: on whole sequences, with a
cross-entropy over all items at every position. Position ``n`` of a training
sequence predicts item ``n + 1``, so one sequence of length ``L`` gives ``L``
targets in one forward pass, where RecBole's SASRec trains one prefix row per
target and one target per row.

It learns from the whole-sequence training data of ADRec and CDDRec
(:class:`~recbole_diffusion.data.WholeSequenceDataset`: one row per user, or
per window of ``MAX_ITEM_LIST_LENGTH`` items with ``train_windows: all``);
validation and test rows are RecBole's, so evaluation is the same as for every
other model. ADRec's stage 1 is nearly this model (it has no positional
embedding).

Deviations:
    - The paper's code pads on the left and reads the last column; RecBole pads
      on the right, so the output is read at ``item_seq_len - 1`` (as RecBole's
      SASRec does). With the causal mask, padding after the last item cannot
      change it.
    - Only ``loss_type: CE`` (the paper's best loss) is accepted; the paper's
      sampled-softmax variant for large catalogues is not implemented (the
      catalogues here have at most ~12k items, where the full softmax is cheap).
"""

import torch
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_diffusion.data.dataset import TARGET_LIST_PREFIX
from recbole_diffusion.fast_layers import use_fast_layers
from recbole_diffusion.utils import ConfigError

__all__ = ["SASRecPlus"]


class SASRecPlus(SASRec):
    r"""SASRec trained with cross-entropy over all items at every position.

    Config (``props/SASRecPlus.yaml``): RecBole's SASRec keys (``n_layers``,
    ``n_heads``, ``hidden_size``, ``inner_size``, ``hidden_dropout_prob``,
    ``attn_dropout_prob``, ``hidden_act``, ``layer_norm_eps``,
    ``initializer_range``) and ``loss_type: CE``.
    """

    def __init__(self, config, dataset):
        if config["loss_type"] != "CE":
            raise ConfigError(
                f"SASRec+ trains with cross-entropy at every position: set "
                f"loss_type: CE (got {config['loss_type']!r})."
            )
        super().__init__(config, dataset)
        self.TARGET_SEQ = TARGET_LIST_PREFIX + self.ITEM_SEQ

        # cheaper dropout masks, GELU and cross-entropy on the CPU, same maths
        # (fast_dropout, fast_gelu, fast_cross_entropy; see
        # recbole_diffusion.fast_layers)
        use_fast_layers(self, config)

    def sequence_output(self, item_seq):
        """The encoder's output at every position, [B, L, H]."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        hidden = self.item_embedding(item_seq) + self.position_embedding(positions)
        hidden = self.dropout(self.LayerNorm(hidden))
        attention_mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(
            hidden, attention_mask, output_all_encoded_layers=False
        )[-1]

    def forward(self, item_seq, item_seq_len):
        return self.gather_indexes(self.sequence_output(item_seq), item_seq_len - 1)

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        targets = interaction[self.TARGET_SEQ]
        output = self.sequence_output(item_seq)
        # Only positions with a target (0 marks padding) enter the mean; the
        # output rows of padding positions are never scored.
        has_target = targets > 0
        logits = output[has_target] @ self.item_embedding.weight.t()
        return self.loss_fct(logits, targets[has_target])
