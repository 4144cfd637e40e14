"""Training objectives of the recipe. Every objective takes a denoiser
`model(input_ids [B,S], position_ids [B,S], allowed [B,S,S]) -> logits [B,S,V]` and returns a
`LossOutput`; none of them knows about parallelism."""

from llada_core.objectives.common import LossOutput, Noise, draw_noise

__all__ = ["LossOutput", "Noise", "draw_noise"]
