"""The baselines GAD is compared with, one module per method as TRL keeps one folder per trainer: `seqkd` (SFT on
the teacher's answers) and `soda` (DPO against the starting student's own samples)."""
