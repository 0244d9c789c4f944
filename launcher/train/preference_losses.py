"""The preference losses, on per-sequence log-probabilities: each a few lines, as TRL 1.16 computes them.

TRL's DPOTrainer computes its losses inline in `_compute_loss` (dpo_trainer.py), after its own tokenisation,
its own reference model and a patched "fused LM head" forward; its CPO trainer (SimPO) lives in
`trl.experimental` and its loss is a method of that trainer. Neither is callable on log-probs alone, so the
formulas are written here exactly as TRL writes them (tests/test_preference.py checks each on a hand-made
batch against the paper's formula):

* sigmoid (DPO, Rafailov et al. 2023): -log sigmoid(beta * ((c - c_ref) - (r - r_ref)))
* robust (robust DPO, Chowdhury et al. 2024), with eps = label_smoothing, the label flip rate, and
  z = beta * ((c - c_ref) - (r - r_ref)): ((1 - eps) * -log sigmoid(z) - eps * -log sigmoid(-z)) / (1 - 2 eps), an
  unbiased estimate of the DPO loss under labels flipped with probability eps (TRL's loss_type "robust").
* ipo (IPO, Azar et al. 2023, eq. 17): ((c - c_ref)/n_c - (r - r_ref)/n_r - 1/(2 beta))^2; TRL divides the
  log-ratios by the replies' token counts n (confirmed with the IPO authors, per TRL's comment).
* simpo (SimPO, Meng et al. 2024, eq. 6): -log sigmoid(beta * (c/n_c - r/n_r) - gamma); no reference. TRL's
  `simpo_gamma` is this gamma (its CPO code subtracts gamma/beta inside beta * (...)).
* orpo (ORPO, Hong et al. 2024, eqs. 4-7): -c/n_c - beta * log sigmoid(log odds(c/n_c) - log odds(r/n_r)), where
  log odds(p) = p - log(1 - exp(p)) on mean per-token log-probs p; no reference; beta is the paper's lambda. The
  NLL term is the chosen reply's mean token NLL, as the paper's L_SFT (TRL's ORPOTrainer also counts the prompt's
  tokens in it; ftl scores replies only, as its chat task does).

The implicit rewards (what reward accuracy and margin compare) are beta * (logp - logp_ref) for DPO, robust DPO
and IPO (as TRL logs them) and beta * logp / n for SimPO and ORPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftl.launcher.recipe.tasks import REFERENCE_FREE_LOSSES
from ftl.launcher.token_labels import IGNORE_INDEX


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
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen rewards, rejected rewards), each of shape [B]."""
    if loss in REFERENCE_FREE_LOSSES:
        chosen = policy.chosen / policy.chosen_tokens.clamp(min=1)
        rejected = policy.rejected / policy.rejected_tokens.clamp(min=1)
        if loss == "orpo":
            log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
            losses = -chosen - beta * F.logsigmoid(log_odds)
        else:
            losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
        return losses, beta * chosen.detach(), beta * rejected.detach()
    if reference is None:
        raise ValueError(f"loss {loss} needs the reference model's log-probs")
    chosen_ratio = policy.chosen - reference.chosen
    rejected_ratio = policy.rejected - reference.rejected
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss == "robust":
        z, eps = beta * (chosen_ratio - rejected_ratio), label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    elif loss == "ipo":
        delta = chosen_ratio / policy.chosen_tokens.clamp(
            min=1
        ) - rejected_ratio / policy.rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {loss}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation (branching at -log 2, as TRL and Maechler 2012); a reply
    scored with probability 1 (x = 0, infinite odds) is held just below it."""
    x = x.clamp(max=-1e-6)
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probabilities of each row's labelled tokens, their count): logits [N, T, V] predict the
    next token, labels [N, T] hold IGNORE_INDEX (-100) off the reply."""
    logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    picked = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1).float()
    token_logps = picked - torch.logsumexp(logits.float(), dim=-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def reply_window(labels: torch.Tensor) -> int:
    """How many trailing positions' logits score every row's reply (0: all of them). Rows are right-padded and a
    reply follows its prompt, so the logits from the position before the earliest reply token on are the only
    ones `sequence_logps` reads; with `labels[:, -k:]` beside them it gives the same sums."""
    scored = labels != IGNORE_INDEX
    rows = scored.any(dim=1)
    if not bool(rows.any()):
        return 0
    first = int(scored.int().argmax(dim=1)[rows].min())
    return labels.shape[1] - first + 1 if first >= 1 else 0


def split_pairs(sums: torch.Tensor, counts: torch.Tensor) -> PairLogps:
    """A batch of 2B sequences (the B chosen first) as B pairs."""
    chosen, rejected = sums.chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens)
