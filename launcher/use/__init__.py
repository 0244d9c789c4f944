"""Using what was trained: `ftl runs`, `ftl compare`.

runs.py      find run directories below a folder (trials of searches, stages) and describe each one
curves.py    training and evaluation curves from TensorBoard event files (or log_history.json)
compare.py   recipe differences, a metric table and a PNG of the curves of several runs
"""
