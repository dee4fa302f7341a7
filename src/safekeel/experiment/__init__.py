"""`safekeel experiment GRID.yaml`: a grid of train + safety eval + task eval cells on one model,
resumable cell by cell, summarised as results.csv, tables.md and pareto.png (docs/experiments.md).

Modules: `grid` (the YAML file), `cells` (a cell, its id and settings; expansion in run order), `runner` (running, skipping and checking cells),
`execute` (one cell in this process, and the worker a cell's subprocess runs), `tables` (results.csv and
tables.md), `pareto` (pareto.png)."""
