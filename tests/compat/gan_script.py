"""gan_model.py's GAN trained by a plain loop, for `nandoctor run` (tests/test_compat.py): the
generator's optimizer steps here, the discriminator's inside training_step; step 2's zero real
sample puts 0 * inf into the discriminator's backward."""
import torch

from gan_model import build_model, get_batch, training_step

torch.manual_seed(0)
model = build_model()
opt = torch.optim.SGD(model.generator.parameters(), lr=0.01)
for step in range(5):
    loss = training_step(model, get_batch(step))
    opt.zero_grad()
    loss.backward()
    opt.step()
