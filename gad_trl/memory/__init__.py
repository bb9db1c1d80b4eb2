"""Memory before you rent: the estimator (`estimator`) and how a recipe's launch and fields map to its modes
(`recipe`). The `gad-trl estimate-memory` command lives in `gad_trl.cli.estimate_memory`."""
