# Source: https://github.com/huggingface/transformers/issues/5651
# Healthy: a tiny T5 from a config (no download) trained seq2seq with padded labels (-100); small weights keep it inside float16 range.
import torch
from transformers import T5Config, T5ForConditionalGeneration


def build_model():
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    return T5ForConditionalGeneration(config)


def get_batch(step):
    src = torch.randint(1, 64, (4, 10))
    src_mask = torch.ones(4, 10, dtype=torch.long)
    src_mask[2, 7:] = 0
    labels = torch.randint(1, 64, (4, 6))
    labels[0, 4:] = -100
    return {"input_ids": src, "attention_mask": src_mask, "labels": labels}, None
