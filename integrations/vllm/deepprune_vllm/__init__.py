"""DeepPrune on vLLM."""
