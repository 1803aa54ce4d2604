"""An image classifier in Lightning's automatic optimization under bf16-mixed, the shape of
Lightning's own backbone_image_classifier.py (tests/test_replay_script.py): one NaN pixel in
sample 11, in the batch of step 2."""
import lightning as L
import torch
from torch import nn
from torch.nn import functional as F


class Backbone(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.l1 = nn.Linear(28 * 28, hidden)
        self.l2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = torch.relu(self.l1(x))
        return torch.relu(self.l2(x))


class LitClassifier(L.LightningModule):
    def __init__(self, backbone=None, learning_rate=1e-3):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone or Backbone()

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        return F.cross_entropy(y_hat, y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


def get_loader():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 28, 28, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)
    images[11, 14, 14] = float("nan")
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)


if __name__ == "__main__":         # `nandoctor run lit_image_bf16.py`
    torch.manual_seed(0)
    trainer = L.Trainer(max_steps=8, accelerator="cpu", precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(LitClassifier(), get_loader())
