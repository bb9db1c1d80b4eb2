"""The `gad-trl` command line (`gad_trl.cli.main:main`): `train`, `analyze-lengths`, `eval-discriminator`,
`make-tiny`, `vllm-serve`. Submodules are imported lazily by the dispatcher so `gad-trl --help` stays fast."""
