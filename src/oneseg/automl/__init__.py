"""Hyper-parameter search over the spec (`oneseg automl`), on Optuna.

- `space`: which dotted spec keys are searched, over ranges read from the schema's bounds;
- `trial`: one trial, a normal training run in `results_dir/automl/trial_NNN/`, reporting its
  validation metric to Optuna after each validation so Hyperband can stop it early;
- `study`: the resumable study in a database that one or many processes run together;
- `report`: `best_spec.yaml`, the trials table, pictures and KPIs.
"""
