"""Where a templated sequence's prompt ends, and which token a row's state is read from.

For a padded batch (left or right padding) with attention mask `m` [B, L]:

* `first_token_index` — the first `i` with `m[i] = 1`; `last_token_index` — the last such `i`;
* `find_prompt_end` — the last prompt token: `first + prompt_length - 1` when the prompt lengths are known,
  else the end of the last occurrence of the response marker (the chat template's assistant header, or the
  separator of the plain format) that lies before the row's last real token;
* `backbone_is_causal` — encoders (architectures with a masked-LM head) see the response from the prompt end.

This module imports torch and transformers only: `save_pretrained` copies it beside checkpoints with
`modeling.py`, so they load with `trust_remote_code=True` where vrm is not installed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES


class PromptBoundaryError(ValueError):
    """The prompt/response boundary could not be found in a row."""


def backbone_is_causal(text_config) -> bool:
    """Infer whether an architecture attends causally: encoders are those with a masked-LM head."""
    return text_config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def first_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the first real token of each row [B] (works for left and right padding)."""
    return attention_mask.long().argmax(dim=1)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row [B] (works for left and right padding)."""
    return attention_mask.shape[1] - 1 - attention_mask.long().flip(1).argmax(dim=1)


def find_prompt_end(
    input_ids: Tensor,
    attention_mask: Tensor,
    prompt_lengths: Tensor | None = None,
    marker_ids: list[int] | None = None,
) -> Tensor:
    """Index of the last prompt token of each row [B].

    With `prompt_lengths` (real prompt tokens per row) it is `first_real + prompt_length - 1`. Otherwise the
    last occurrence of `marker_ids` that ends before the row's last real token marks the end of the prompt.
    """
    first = first_token_index(attention_mask)
    if prompt_lengths is not None:
        return first + prompt_lengths.to(first.device).long() - 1
    if not marker_ids:
        raise PromptBoundaryError(
            "no prompt_lengths were given and the config has no response_marker_ids to find the prompt end; "
            "pass prompt_lengths or tokenize with vrm.data.PreferenceTokenizer"
        )
    marker = torch.tensor(marker_ids, device=input_ids.device)
    width = marker.numel()
    if input_ids.shape[1] < width:
        raise PromptBoundaryError("sequences are shorter than the response marker")
    windows = input_ids.unfold(1, width, 1)  # [B, L - m + 1, m]
    ends = torch.arange(width - 1, input_ids.shape[1], device=input_ids.device)  # window end positions
    matches = (windows == marker).all(-1) & attention_mask[:, width - 1 :].bool()
    matches &= ends.unsqueeze(0) < last_token_index(attention_mask).unsqueeze(1)
    if not bool(matches.any(1).all()):
        missing = (~matches.any(1)).nonzero().flatten().tolist()
        raise PromptBoundaryError(
            f"response marker {marker_ids} not found before the last token in rows {missing}; "
            "pass prompt_lengths or format inputs with the template used at training time"
        )
    last_match = matches.shape[1] - 1 - matches.long().flip(1).argmax(1)
    return ends[last_match]
