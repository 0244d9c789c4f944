"""Using what was trained: `ftl eval`, `ftl predict`, `ftl generate`, `ftl runs`, `ftl compare`.

trained.py   open a finished run: its recipe, task state, tokenizer and model (full or LoRA adapter)
evaluate.py  score a finished run on a labelled file with the run's own task settings (HF Trainer.evaluate)
predict.py   a file's rows through the model in batches -> JSONL with the input and the prediction fields
generate.py  prompts (text, JSON fields, a file) -> generated text, with sampling settings and a seed
runs.py      find run directories below a folder (trials of searches, stages) and describe each one
curves.py    training and evaluation curves from TensorBoard event files (or log_history.json)
compare.py   recipe differences, a metric table and a PNG of the curves of several runs
output.py    JSONL to a file or stdout, progress bars on a terminal
commands.py  the CLI verbs predict, generate, runs, compare (registered on launcher.cli's app)
"""
