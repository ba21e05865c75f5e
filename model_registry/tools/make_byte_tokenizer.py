"""Build the offline byte-level tokenizer shipped with the default model (run once; output is committed)."""
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

out = sys.argv[1]
alphabet = ByteLevel.alphabet()  # 256 printable stand-ins for bytes
vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
for ch in sorted(alphabet):
    vocab[ch] = len(vocab)
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
tok.decoder = decoders.ByteLevel()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
fast.chat_template = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
fast.save_pretrained(out)
ids = fast("héllo ${x}")["input_ids"]
print(len(vocab), ids, repr(fast.decode(ids)))
