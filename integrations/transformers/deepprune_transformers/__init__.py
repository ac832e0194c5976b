"""DeepPrune on Hugging Face transformers."""
