"""Optional judges: VLM safety judges (LlavaGuard, ShieldGemma 2, Llama Guard 3 Vision) and
the multi-headed safety classifier; each loads offline from a folder or the local HF cache."""
