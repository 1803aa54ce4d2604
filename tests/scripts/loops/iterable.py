"""Batches from an IterableDataset whose __iter__ is a generator, through a DataLoader."""
import torch
from net import Net, batch


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        for step in range(6):
            yield batch(step)


torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for x, y in torch.utils.data.DataLoader(Stream(), batch_size=None):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
