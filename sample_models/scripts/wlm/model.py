"""Word embedding -> recurrent layers -> vocabulary projection -> log-probabilities. The
recurrent state goes in and comes out, so the training loop can carry it across batches."""
import torch.nn as nn
import torch.nn.functional as F

CELLS = {"LSTM": (nn.LSTM, {}), "GRU": (nn.GRU, {}), "RNN_TANH": (nn.RNN, {"nonlinearity": "tanh"}),
         "RNN_RELU": (nn.RNN, {"nonlinearity": "relu"})}


class RNNModel(nn.Module):
    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        cell, extra = CELLS[rnn_type]
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = cell(ninp, nhid, nlayers, dropout=dropout, **extra)
        self.decoder = nn.Linear(nhid, ntoken)
        self.is_lstm, self.nhid, self.nlayers = rnn_type == "LSTM", nhid, nlayers
        for weight in (self.encoder.weight, self.decoder.weight):
            nn.init.uniform_(weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens, state):
        outputs, state = self.rnn(self.drop(self.encoder(tokens)), state)
        scores = self.decoder(self.drop(outputs))
        return F.log_softmax(scores.reshape(-1, scores.size(-1)), dim=1), state

    def init_hidden(self, batch):
        zeros = self.decoder.weight.new_zeros(self.nlayers, batch, self.nhid)
        return (zeros, zeros.clone()) if self.is_lstm else zeros
