"""Two optimizers (a GAN): the discriminator scores real rows (step 3's hold a zero row) and fakes."""
import torch
from net import Net, batch

torch.manual_seed(0)
generator = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
critic = Net()
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3)
opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3)
for step in range(6):
    real, _ = batch(step)
    fake = generator(torch.randn(8, 3))
    loss_d = critic(real).mean() - critic(fake.detach()).mean()
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    loss_g = -critic(fake).mean()
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
