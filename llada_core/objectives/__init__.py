"""Training objectives of the recipe. Each module declares one `Objective` (llada_core.objectives.base)
with its config; `registry` lists them by kind. The math takes a denoiser
`model(input_ids [B,S], position_ids [B,S], allowed [B,S,S]) -> logits [B,S,V]` and returns a
`LossOutput`; none of it knows about parallelism."""
