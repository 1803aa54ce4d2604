"""A plain training loop with callbacks: the loss is computed and stepped here, not in the script."""
import time
from collections import defaultdict

import torch
from torch.utils.data.dataloader import DataLoader

from mingpt.utils import CfgNode as CN


class Trainer:
    @staticmethod
    def get_default_config():
        return CN(device="cpu", num_workers=0, max_iters=None, batch_size=8, learning_rate=3e-4,
                  betas=(0.9, 0.95), weight_decay=0.1, grad_norm_clip=1.0)

    def __init__(self, config, model, train_dataset):
        self.config, self.model, self.train_dataset = config, model, train_dataset
        self.optimizer = None
        self.callbacks = defaultdict(list)
        self.device = config.device
        self.iter_num, self.iter_time, self.iter_dt = 0, 0.0, 0.0

    def set_callback(self, onevent, callback):
        self.callbacks[onevent] = [callback]

    def trigger_callbacks(self, onevent):
        for callback in self.callbacks.get(onevent, []):
            callback(self)

    def batches(self):
        """An endless stream: sampling with replacement, so no epoch ever ends."""
        sampler = torch.utils.data.RandomSampler(self.train_dataset, replacement=True, num_samples=10 ** 10)
        loader = DataLoader(self.train_dataset, sampler=sampler, batch_size=self.config.batch_size,
                            num_workers=self.config.num_workers)
        while True:
            yield from loader

    def run(self):
        model, config = self.model, self.config
        self.optimizer = model.configure_optimizers(config)
        model.train()
        self.iter_num, self.iter_time = 0, time.time()
        for x, y in self.batches():
            x, y = x.to(self.device), y.to(self.device)
            _, self.loss = model(x, y)
            model.zero_grad(set_to_none=True)
            self.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_norm_clip)
            self.optimizer.step()
            self.trigger_callbacks("on_batch_end")
            self.iter_num += 1
            now = time.time()
            self.iter_dt, self.iter_time = now - self.iter_time, now
            if config.max_iters is not None and self.iter_num >= config.max_iters:
                break
