"""The SFT loss at the label positions only: output layer and cross-entropy where a label is.

Only the counselor's tokens carry loss (18-32% of a packed row in the smoke corpus), yet a causal
LM's output layer scores every position against the whole vocabulary (262k for Gemma 3). TRL's
SFTTrainer already asks the model for per-token log-probabilities (`fused_lm_head=True`); its kernel
keeps to the label positions only where Triton runs and otherwise scores every position in fp32
chunks and recomputes them in backward. `LossPositionsSFTTrainer` answers that same call by
gathering the final hidden states at the positions whose next-token label is not -100 and running
the output layer and cross-entropy there alone (plain torch; Liger's fused linear cross-entropy
on CUDA when `liger_kernel` is installed). Everything around it stays TRL's: assistant-only and
completion masks (they are the -100 labels), padding-free packing (the collator masks each packed
sequence's first label), token-weighted loss under gradient accumulation (`num_items_in_batch`),
DDP scaling and the entropy / token-accuracy metrics.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from trl import SFTTrainer
from trl.trainer.utils import FusedCausalLMOutput

from mi_llm.models.registry import logit_transform

METRIC_CHUNK = 1024  # rows of logits built at a time for the no-grad metrics on the Liger path


def _logits(hidden, weight, bias, scale, softcap):
    logits = F.linear(hidden, weight, bias)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def use_liger(device) -> bool:
    """Whether Liger's fused linear cross-entropy runs here (a CUDA device with liger_kernel)."""
    import importlib.util

    return (
        torch.device(device).type == "cuda" and importlib.util.find_spec("liger_kernel") is not None
    )


def label_position_scores(hidden, weight, bias, labels, scale=1.0, softcap=None, liger=False):
    """(log_probs, entropy, is_top1) at the label positions: hidden (K, d), labels (K,), all valid.

    log_probs carries the gradient; entropy and is_top1 are detached metrics.
    """
    if liger:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        if scale != 1.0:
            hidden = hidden * scale  # a linear layer: scaling its input scales its logits (no bias)
        out = liger_fused_linear_cross_entropy(
            hidden, weight, labels, bias=bias, reduction="none", softcap=softcap
        )
        nll = out.loss if hasattr(out, "loss") else out[0] if isinstance(out, tuple) else out
        log_probs = -nll.float()
        with torch.no_grad():
            ent, top1 = [], []
            for i in range(0, hidden.size(0), METRIC_CHUNK):
                lg = _logits(hidden[i : i + METRIC_CHUNK], weight, bias, 1.0, softcap).float()
                lp = lg.log_softmax(-1)
                ent.append(-(lp.exp() * lp).sum(-1))
                top1.append(lg.argmax(-1) == labels[i : i + METRIC_CHUNK])
            return log_probs, torch.cat(ent), torch.cat(top1)
    logits = _logits(hidden, weight, bias, scale, softcap).float()
    log_probs = -F.cross_entropy(logits, labels, reduction="none")
    with torch.no_grad():
        lp = logits.log_softmax(-1)
        entropy = -(lp.exp() * lp).sum(-1)
        is_top1 = logits.argmax(-1) == labels
    return log_probs, entropy, is_top1


def add_loss_positions_head(model, liger: bool | None = None) -> None:
    """Make `model(..., labels=..., fused_lm_head=True)` score the label positions only.

    Patches the forward of the causal LM (under PEFT: its base model), on top of TRL's fused head;
    any other call goes to the previous forward unchanged (generation, evaluation with logits).
    """
    previous = model.forward
    scale, softcap = logit_transform(model.config)

    def forward(
        self,
        *args,
        fused_lm_head=False,
        labels=None,
        shift_labels=None,
        num_items_in_batch=None,
        **kwargs,
    ):
        if not fused_lm_head:
            extra = {
                k: v
                for k, v in [
                    ("labels", labels),
                    ("shift_labels", shift_labels),
                    ("num_items_in_batch", num_items_in_batch),
                ]
                if v is not None
            }
            return previous(*args, **kwargs, **extra)
        kwargs["use_cache"] = False
        hidden = self.base_model(
            *args, **kwargs
        ).last_hidden_state  # the backbone, looked up per call (PEFT, FSDP)
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        head = self.get_output_embeddings()
        labels = labels.to(head.weight.device)
        mask = labels != -100
        fused = use_liger(head.weight.device) if liger is None else liger
        lp, ent, top1 = label_position_scores(
            hidden.to(head.weight.device)[mask],
            head.weight,
            head.bias,
            labels[mask],
            scale,
            softcap,
            liger=fused,
        )
        # back to (batch, seq) with zeros where there is no label, as TRL's fused head returns them;
        # masked_scatter keeps a batch without labels connected to the graph (a zero loss, not an error)
        log_probs = lp.new_zeros(mask.shape).masked_scatter(mask, lp)
        entropy = ent.new_zeros(mask.shape).masked_scatter(mask, ent)
        is_top1 = top1.new_zeros(mask.shape).masked_scatter(mask, top1)
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denom,
            log_probs=log_probs,
            entropy=entropy,
            is_top1=is_top1,
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)


class LossPositionsSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer whose loss scores only the positions that carry a label (see the module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if getattr(inner.config.get_text_config(), "output_router_logits", False):
            return  # MoE: TRL's head adds the router loss; keep it (no registry model is MoE)
        add_loss_positions_head(inner)
