"""A tiny GPT-2 trained by the Hugging Face `Trainer` under torchrun (DDP, gloo, CPU), guarded by
NanDoctorCallback. Environment: OUT, BAD_INDEX (a dataset item whose embeddings hold a NaN), STEPS."""
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stops import record_stop                                          # noqa: E402
import nandoctor                                                       # noqa: E402
from nandoctor.integrations.transformers import NanDoctorCallback      # noqa: E402


class EmbedsDataset(torch.utils.data.Dataset):
    def __init__(self, bad_index, n=256):
        g = torch.Generator().manual_seed(1)
        self.embeds = torch.randn(n, 8, 16, generator=g) * 0.1
        self.labels = torch.randint(0, 32, (n, 8), generator=g)
        if bad_index >= 0:
            self.embeds[bad_index, 3, 5] = float("nan")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"inputs_embeds": self.embeds[i], "labels": self.labels[i]}


def main():
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    rank = int(os.environ["RANK"])
    out = os.environ.get("OUT", "bundles")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(output_dir=os.path.join(out, "trainer"), max_steps=int(os.environ.get("STEPS", "8")),
                             per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], save_strategy="no",
                             logging_strategy="no", use_cpu=True, ddp_backend="gloo", dataloader_num_workers=0,
                             seed=0, train_sampling_strategy="sequential")
    trainer = Trainer(model=model, args=args, train_dataset=EmbedsDataset(int(os.environ.get("BAD_INDEX", "-1"))),
                      callbacks=[NanDoctorCallback(out=out)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            trainer.train()
    except nandoctor.NonFiniteError as err:
        record_stop(out, rank, err)
        raise
    print(f"RANK {rank} steps {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main()
