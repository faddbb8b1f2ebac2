"""method=finetune: Lightning training of a Hugging Face model (full or PEFT) on a task, then evaluation
with the core scorer.

- :mod:`.data`: the LightningDataModule (rows -> prompts -> token ids, cached; padding, batching);
- :mod:`.module`: the LightningModule (loss on answer tokens or a classification head, optimiser);
- :mod:`.callbacks`: training statistics for results.json (loss curve, tokens/s, peak memory, MFU);
- :mod:`.run`: one fine-tuning run end to end; :mod:`.hpo`: an Optuna study of such runs with pruning.

Everything here imports torch and Lightning, so only ``method=finetune`` loads it.
"""
