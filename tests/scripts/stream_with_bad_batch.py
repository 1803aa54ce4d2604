"""A data stream with an injected bad batch (samples 21 and 22 of 96, in the third batch of each epoch):
`nandoctor run --on-nonfinite rollback` survives it (tests/test_policies.py, the keep-the-run-alive guide)."""
import torch

class Stream(torch.utils.data.Dataset):
    def __init__(self, n=96):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        x = self.x[i].clone()
        if i == 21:
            x[1] = float("nan")     # a corrupt record
        elif i == 22:
            x = x * 1e38            # a record in the wrong units: its logits overflow
        return x, self.y[i]

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.9)
loader = torch.utils.data.DataLoader(Stream(), batch_size=8)
for epoch in range(2):
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
