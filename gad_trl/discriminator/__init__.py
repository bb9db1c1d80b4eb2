"""The discriminator: a causal-LM backbone with a scalar value head (`model`, `pooling`; `value_head` for decoders
without a sequence-classification class), its LoRA / QLoRA / shared-base forms (`adapters`), FSDP2 sharding
(`sharding`), the losses (`losses`), the replay buffer (`replay`), the held-out evaluation (`heldout`), and
`component.Discriminator`, the object `GADTrainer` holds to build, score, update, save and load it. Submodules are
imported where used: this package imports nothing itself, so `import gad_trl` stays cheap."""
