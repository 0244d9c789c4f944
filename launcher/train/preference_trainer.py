"""The Trainer of preference tuning: ftl's Trainer (checkpoints, NaN guard, layer schedule, ZeRO through HF)
with a loss over chosen/rejected pairs.

Why not TRL's DPOTrainer: it tokenises the datasets itself (its own truncation and templating, not the chat
task's rendering), makes its own reference model, wraps the model in a "fused LM head" forward of its own and
logs through its own metrics dictionaries, so it cannot take ftl's prepared data, freezing, adapters and run
directory as the other tasks do. What is taken from TRL is the meaning of everything it computes: the losses
(preference_losses.py, written as TRL writes them), the reference with LoRA (the same model with the adapters
disabled, under no_grad), the pair batch (B chosen then B rejected in one forward: one forward of 2B rows, as
TRL's concatenated forward) and the logged rewards (beta * log-ratio).

The reference (task.reference): adapters_disabled (peft's `disable_adapter()` around a no-grad forward of the
same model); copy (a frozen copy of the starting model, made when the Trainer is; requires_grad off, never
given to the optimizer); precomputed (the starting model's log-probs of every pair, computed once before
training and carried in the batches). SimPO and ORPO have none.

Evaluation returns, per pair, the chosen and rejected rewards and policy log-probs as its "predictions";
the task turns them into reward accuracy, mean margin and the mean log-probs.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import nullcontext

import torch
from transformers import Trainer

from ftl.launcher.errors import FtlError
from ftl.launcher.train.preference_losses import (
    PairLogps,
    preference_loss,
    reply_window,
    sequence_logps,
    split_pairs,
)
from ftl.launcher.train.trainer import FtlTrainerMixin


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def resolve_reference(settings, *, peft: bool) -> str | None:
    """How the reference is held (None: the loss needs none), task.reference's auto resolved."""
    if settings.reference_free:
        return None
    setting = settings.reference
    if setting == "auto":
        return "adapters_disabled" if peft else "copy"
    if setting == "adapters_disabled" and not peft:
        raise FtlError(
            "task.reference: adapters_disabled needs a lora: section (the reference is the base with the adapters "
            "switched off); without lora use copy or precomputed"
        )
    return setting


class PreferenceTrainer(FtlTrainerMixin, Trainer):
    settings = None  # the task's recipe section (loss, beta, ...), given by use_preference
    reference_kind: str | None = None
    reference_model = None  # the frozen copy (reference: copy)

    def use_preference(self, settings, datasets: dict | None = None, *, reference_model=None) -> dict:
        """Take the task's settings and set up the reference; returns `datasets` (name -> Dataset), with the
        reference's log-probs added as columns when they are precomputed. `reference_model` (ftl eval of a run
        without lora): the starting model, loaded again, held as the frozen copy."""
        self.settings = settings
        self.reference_kind = resolve_reference(settings, peft=is_peft(self.model))
        self._logged: dict[str, list[float]] = {"rewards/accuracies": [], "rewards/margins": []}
        if reference_model is not None and self.reference_kind in ("copy", "precomputed"):
            self.reference_kind = "copy"
            self.reference_model = frozen_copy(reference_model.to(self.args.device), copied=False)
        elif self.reference_kind == "copy":
            self.reference_model = frozen_copy(self.model)
        datasets = dict(datasets or {})
        if self.reference_kind == "precomputed":
            datasets = {name: self.with_reference_logps(d) for name, d in datasets.items() if d is not None}
        return datasets

    # ---- log-probabilities -------------------------------------------------------------------------------
    def _logps(self, model, inputs) -> PairLogps:
        """Sequence log-probs of the batch's replies. Only the positions that predict a reply token get logits
        (`logits_to_keep`, as TRL's use_logits_to_keep): the LM head and the log-softmax over the vocabulary
        skip the prompts, which are most of a dialogue's tokens (benchmarks/preference_logits_window.py: 1.3x per
        step of policy + reference forward and backward on recipes/hh-dpo-smollm2.yaml's batches, 2-core CPU)."""
        labels = inputs["labels"]
        keep = reply_window(labels) if self._takes_logits_to_keep(model) else 0
        window = {"logits_to_keep": keep} if keep else {}
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False, **window
        ).logits
        return split_pairs(*sequence_logps(logits, labels[:, -keep:] if keep else labels))

    def _takes_logits_to_keep(self, model) -> bool:
        """Whether the model's own forward has `logits_to_keep` (transformers' causal LMs do; a custom model
        may not), looked up once through the DeepSpeed/DDP and peft wrappers."""
        known = getattr(self, "_logits_to_keep_known", None)
        if known is None:
            inner = self.accelerator.unwrap_model(model)
            inner = inner.get_base_model() if is_peft(inner) else inner
            known = "logits_to_keep" in inspect.signature(inner.forward).parameters
            self._logits_to_keep_known = known
        return known

    def _reference_logps(self, model, inputs, policy: PairLogps) -> PairLogps | None:
        kind = self.reference_kind
        if kind is None:
            return None
        if kind == "precomputed":
            return PairLogps(
                inputs["ref_chosen_logps"],
                inputs["ref_rejected_logps"],
                policy.chosen_tokens,
                policy.rejected_tokens,
            )
        with torch.no_grad():
            if kind == "copy":
                return self._logps(follow(self.reference_model, model), inputs)
            with self.accelerator.unwrap_model(model).disable_adapter():
                return self._logps(model, inputs)

    def _pairs(self, model, inputs):
        s = self.settings
        policy = self._logps(model, inputs)
        reference = self._reference_logps(model, inputs, policy)
        losses, chosen, rejected = preference_loss(
            s.loss, policy, reference, beta=s.beta, gamma=s.simpo_gamma, label_smoothing=s.label_smoothing
        )
        return losses.mean(), (chosen, rejected, policy.chosen.detach(), policy.rejected.detach())

    # ---- training and evaluation ------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, rewards = self._pairs(model, inputs)
        if model.training:
            chosen, rejected = rewards[0], rewards[1]
            self._logged["rewards/accuracies"].append(float((chosen > rejected).float().mean()))
            self._logged["rewards/margins"].append(float((chosen - rejected).mean()))
        return (loss, rewards) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, rewards = self._pairs(model, inputs)
        if prediction_loss_only:
            return loss.detach(), None, None
        predictions = torch.stack([r.float() for r in rewards], dim=1)  # [B, 4]
        return loss.detach(), predictions, torch.zeros(len(predictions), device=predictions.device)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs carry the mean reward accuracy and margin of the batches since the last log (this
        worker's), as TRL's rewards/accuracies and rewards/margins."""
        logged = getattr(self, "_logged", None)
        if logged and "loss" in logs:
            for key, values in logged.items():
                if values:
                    logs[key] = sum(values) / len(values)
                    values.clear()
        super().log(logs, *args, **kwargs)

    # ---- reference log-probs computed once -----------------------------------------------------------------
    def with_reference_logps(self, dataset):
        """`dataset` with ref_chosen_logps and ref_rejected_logps: the current (starting) model's log-probs."""
        model = self.model
        if next(model.parameters()).device != self.args.device:
            # under DeepSpeed the Trainer leaves the model where it was loaded until training starts (the engine
            # moves it): on a GPU node that is the CPU, while batches go to the GPU
            model.to(self.args.device)
        was_training = model.training
        model.eval()
        chosen: list[float] = []
        rejected: list[float] = []
        size = self.args.per_device_eval_batch_size
        adapters = model.disable_adapter() if is_peft(model) else nullcontext()
        try:
            with torch.no_grad(), adapters, self.autocast_smart_context_manager():
                for start in range(0, len(dataset), size):
                    rows = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
                    batch = {k: v.to(self.args.device) for k, v in self.data_collator(rows).items()}
                    found = self._logps(model, batch)
                    chosen += found.chosen.tolist()
                    rejected += found.rejected.tolist()
        finally:
            model.train(was_training)
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)


def follow(reference, policy):
    """The frozen copy on the policy's device and in its dtypes, tensor by tensor: under DeepSpeed the engine moves
    the policy to the GPU and casts its parameters (not its buffers, e.g. rotary frequencies stay fp32) to
    bf16/fp16 when training starts, after the copy was made. A copy left behind would give the step-1 policy a
    non-zero log-ratio to itself."""
    policy = getattr(policy, "module", policy)  # DeepSpeed's engine or DDP around the model
    pairs = [
        *zip(reference.parameters(), policy.parameters(), strict=True),
        *zip(reference.buffers(), policy.buffers(), strict=True),
    ]
    for held, target in pairs:
        if held.device != target.device or held.dtype != target.dtype:
            held.data = held.data.to(device=target.device, dtype=target.dtype)
    return reference


def frozen_copy(model, *, copied: bool = True):
    """A copy of `model` (copied=False: `model` itself) that never trains (evaluation mode, no gradients)."""
    reference = copy.deepcopy(model) if copied else model
    reference.eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference
