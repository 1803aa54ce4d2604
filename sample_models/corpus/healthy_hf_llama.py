# Source: https://github.com/huggingface/transformers/pull/28538
# Healthy: a tiny Llama from a config (no download), left-padded batches with an attention mask, gradient checkpointing on.
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def build_model():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def get_batch(step):
    ids = torch.randint(1, 64, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, :3] = 0              # left padding
    mask[3, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, None
