"""The preference losses, on per-sequence log-probabilities: each a few lines, as TRL 1.16 computes them.

TRL's DPOTrainer computes its losses inline in `_compute_loss` (dpo_trainer.py), after its own tokenisation,
its own reference model and a patched "fused LM head" forward; its CPO trainer (SimPO) lives in
`trl.experimental` and its loss is a method of that trainer. Neither is callable on log-probs alone, so the
formulas are written here exactly as TRL writes them (tests/test_preference.py checks each on a hand-made
batch against the paper's formula):

* sigmoid (DPO, Rafailov et al. 2023): -log sigmoid(beta * ((c - c_ref) - (r - r_ref)))
* ipo (IPO, Azar et al. 2023, eq. 17): ((c - c_ref)/n_c - (r - r_ref)/n_r - 1/(2 beta))^2; TRL divides the
  log-ratios by the replies' token counts n (confirmed with the IPO authors, per TRL's comment).
* simpo (SimPO, Meng et al. 2024, eq. 6): -log sigmoid(beta * (c/n_c - r/n_r) - gamma); no reference. TRL's
  `simpo_gamma` is this gamma (its CPO code subtracts gamma/beta inside beta * (...)).

The implicit rewards (what reward accuracy and margin compare) are beta * (logp - logp_ref) for DPO and IPO
(as TRL logs them) and beta * logp / n for SimPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

REFERENCE_FREE = ("simpo",)


@dataclass
class PairLogps:
    """Sequence log-probabilities of B pairs (shape [B] each) and the replies' token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def preference_loss(
    loss: str,
    policy: PairLogps,
    reference: PairLogps | None,
    *,
    beta: float,
    gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen rewards, rejected rewards), each of shape [B]."""
    if loss in REFERENCE_FREE:
        chosen = policy.chosen / policy.chosen_tokens.clamp(min=1)
        rejected = policy.rejected / policy.rejected_tokens.clamp(min=1)
        losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
        return losses, beta * chosen.detach(), beta * rejected.detach()
    if reference is None:
        raise ValueError(f"loss {loss} needs the reference model's log-probs")
    chosen_ratio = policy.chosen - reference.chosen
    rejected_ratio = policy.rejected - reference.rejected
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss == "ipo":
        delta = chosen_ratio / policy.chosen_tokens.clamp(
            min=1
        ) - rejected_ratio / policy.rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {loss}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probabilities of each row's labelled tokens, their count): logits [N, T, V] predict the
    next token, labels [N, T] hold IGNORE_INDEX (-100) off the reply."""
    logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != -100
    safe = targets.masked_fill(~mask, 0)
    picked = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1).float()
    token_logps = picked - torch.logsumexp(logits.float(), dim=-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def split_pairs(sums: torch.Tensor, counts: torch.Tensor) -> PairLogps:
    """A batch of 2B sequences (the B chosen first) as B pairs."""
    chosen, rejected = sums.chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens)
