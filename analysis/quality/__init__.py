"""The cost side of a guardrail: COCO FID and CLIP distance per config (the SLD paper's Table 2)."""

from analysis.quality.captions import Caption, read_captions, sample_captions
from analysis.quality.run import generate_quality, score_quality

__all__ = ["Caption", "generate_quality", "read_captions", "sample_captions", "score_quality"]
