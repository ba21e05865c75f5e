"""The model side: HF config/model/tokenizer factory, registry architectures, weight assignment."""
