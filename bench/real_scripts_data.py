"""Tiny, offline input files for the real public training scripts of bench/real_scripts.yaml.

Each generator writes, into the temporary copy of a repository, the files its script reads
(in the layout the script expects), small enough that a run takes seconds on one CPU core. A
data-borne failure (a NaN pixel, a NaN row) is a keyword argument of the generator, so the
yaml names it under `inject.prepare`. Everything is drawn from fixed seeds: two runs write the
same bytes.
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

GENERATORS: dict[str, Callable[..., None]] = {}


def generator(fn: Callable[..., None]) -> Callable[..., None]:
    GENERATORS[fn.__name__] = fn
    return fn


def _words(seed: int, vocabulary: list[str], lines: int, low: int, high: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(low, high))) for _ in range(lines)]


@generator
def nanogpt_chars(root: Path, dataset: str = "tiny", chars: int = 4000) -> None:
    """nanoGPT's data/<dataset>/{train,val}.bin (uint16 token ids) and meta.pkl, as
    data/shakespeare_char/prepare.py lays them out."""
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefgh ij\n"), chars))
    alphabet = sorted(set(text))
    stoi = {c: i for i, c in enumerate(alphabet)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    folder = root / "data" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    split = int(len(ids) * 0.9)
    ids[:split].tofile(folder / "train.bin")
    ids[split:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(alphabet), "itos": dict(enumerate(alphabet)), "stoi": stoi}, f)


@generator
def word_corpus(root: Path, folder: str = "data/tiny") -> None:
    """word_language_model's --data folder: train.txt, valid.txt, test.txt of whitespace words."""
    vocabulary = [f"w{i}" for i in range(50)]
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    for seed, (split, lines) in enumerate([("train", 200), ("valid", 30), ("test", 30)]):
        (out / f"{split}.txt").write_text("\n".join(_words(seed, vocabulary, lines, 3, 12)) + "\n")


def _digit_images(n: int, generator_: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1], class k drawn as a bright band at rows 2+2k..4+2k (learnable)."""
    labels = torch.randint(0, 10, (n,), generator=generator_)
    images = torch.rand(n, 28, 28, generator=generator_) * 0.3
    rows = torch.arange(28)
    band = (rows[None, :] >= 2 + 2 * labels[:, None]) & (rows[None, :] < 5 + 2 * labels[:, None])
    images[band] = 1.0
    return images, labels


@generator
def mnist_tensors(root: Path, folder: str = "data", train: int = 256, test: int = 64,
                  nan_image: Optional[int] = None, pixel_scale: float = 1.0) -> None:
    """<folder>/MNIST/tiny/{train,test}.pt for the torchvision stub's datasets.MNIST.
    nan_image: index of a training image that gets one NaN pixel (a corrupt record).
    pixel_scale: 255 stores raw byte values (0..255) instead of [0, 1], as a dataset converted
    without ToTensor's division would."""
    g = torch.Generator().manual_seed(0)
    out = root / folder / "MNIST" / "tiny"
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        images, labels = _digit_images(n, g)
        if name == "train" and nan_image is not None:
            images[nan_image, 10, 10] = float("nan")
        images = images * pixel_scale
        torch.save({"images": images, "labels": labels}, out / f"{name}.pt")


@generator
def lightning_mnist(root: Path, folder: str = "examples/Datasets", train: int = 60000, test: int = 2000,
                    nan_in_first_batches: Optional[int] = None, batch_size: int = 32) -> None:
    """Lightning's mocked MNIST (PL_USE_MOCKED_MNIST=1): <folder>/MNIST/complete/{training,test}.pt,
    each a tuple (images float [N, 28, 28], labels int64 [N]).

    backbone_image_classifier.py splits 60000 training images 55000/5000, so the file must hold
    60000. They are overlapping windows of one tall strip (image i = rows i..i+27, a strided
    view), so the file holds 60027 rows, not 60000 images. nan_in_first_batches=K puts one NaN
    pixel in a strip row whose 28 images all fall in the training split (random_split with seed
    42, as the script calls it), the first of them within the first K batches; the validation
    split stays finite so the sanity check passes."""
    g = torch.Generator().manual_seed(0)
    out = root / folder / "MNIST" / "complete"
    out.mkdir(parents=True, exist_ok=True)
    strip = torch.rand(train + 27, 28, generator=g)
    labels = torch.randint(0, 10, (train,), generator=g)
    if nan_in_first_batches is not None:
        order = torch.randperm(train, generator=torch.Generator().manual_seed(42)).tolist()
        position = {index: p for p, index in enumerate(order)}
        in_train = [position[i] < 55000 for i in range(train)]
        for row in range(27, train):
            images = range(row - 27, row + 1)
            if all(in_train[i] for i in images) and min(position[i] for i in images) < nan_in_first_batches * batch_size:
                strip[row, 14] = float("nan")
                break
        else:
            raise RuntimeError("no strip row fits the NaN placement")
    images = torch.as_strided(strip, (train, 28, 28), (28, 28, 1))
    torch.save((images, labels), out / "training.pt")
    test_images, test_labels = _digit_images(test, g)
    torch.save((test_images, test_labels), out / "test.pt")



@generator
def cifar_tensors(root: Path, folder: str = "datasets", train: int = 64, test: int = 16) -> None:
    """<folder>/cifar10/tiny.pt and tiny_test.pt for the torchvision stub's datasets.CIFAR10:
    colour images [N, 3, 32, 32] in [0, 1], class k a bright square at a position of its own."""
    g = torch.Generator().manual_seed(0)
    out = root / folder / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("tiny.pt", train), ("tiny_test.pt", test)):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.rand(n, 3, 32, 32, generator=g) * 0.4
        for i, k in enumerate(labels.tolist()):
            top, left = 3 * (k // 4) + 4, 6 * (k % 4) + 2
            images[i, k % 3, top:top + 8, left:left + 8] = 1.0
        torch.save({"images": images, "labels": labels}, out / name)


@generator
def cora_graph(root: Path, folder: str = "cora", nodes: int = 1700, features: int = 48, classes: int = 7,
               edges: int = 3000) -> None:
    """<folder>/cora.content and cora.cites in the LINQS Cora layout that pytorch/examples'
    gcn and gat read: `paper_id f1 .. fF class_label` per line (binary word features) and
    `cited citing` id pairs. Each class has its own favoured words, and most citations join
    papers of one class, so the graph is learnable. A few papers have no words at all (the
    scripts map 1/0 of their row sum to 0, as in the real data)."""
    rng = np.random.default_rng(3)
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    ids = rng.choice(np.arange(1000, 1000 + 50 * nodes), nodes, replace=False)
    labels = rng.integers(0, classes, nodes)
    favoured = rng.random((classes, features)) < 0.2
    words = (rng.random((nodes, features)) < np.where(favoured[labels], 0.5, 0.05)).astype(int)
    words[rng.choice(nodes, 5, replace=False)] = 0
    names = [f"Class_{k}" for k in range(classes)]
    (out / "cora.content").write_text("\n".join(
        f"{pid}\t" + "\t".join(map(str, row)) + f"\t{names[k]}" for pid, row, k in zip(ids, words, labels)) + "\n")
    by_class = [np.flatnonzero(labels == k) for k in range(classes)]
    pairs = []
    for _ in range(edges):
        a = int(rng.integers(nodes))
        b = int(rng.choice(by_class[labels[a]])) if rng.random() < 0.8 else int(rng.integers(nodes))
        if a != b:
            pairs.append(f"{ids[a]}\t{ids[b]}")
    (out / "cora.cites").write_text("\n".join(pairs) + "\n")

@generator
def sine_waves(root: Path, path: str = "traindata.pt", waves: int = 12, length: int = 60,
               nan_at: Optional[list[int]] = None) -> None:
    """time_sequence_prediction's traindata.pt: a float64 NumPy array [waves, length] of shifted
    sines, saved with torch.save as generate_sine_wave.py does. nan_at=[row, column] writes one
    NaN sample (a gap in a sensor log)."""
    rng = np.random.default_rng(2)
    period = 20
    x = np.arange(length)[None, :] + rng.integers(-4 * period, 4 * period, waves)[:, None]
    data = np.sin(x / 1.0 / period).astype("float64")
    if nan_at is not None:
        data[nan_at[0], nan_at[1]] = np.nan
    torch.save(data, root / path)


@generator
def char_text(root: Path, path: str = "input.txt", words: int = 1500) -> None:
    """minGPT chargpt's input.txt. It holds every character of the script's sampling prompt
    ("O God, O God!")."""
    vocabulary = ["the", "king", "and", "lord", "of", "thee", "my", "good", "sir", "O", "God,", "is", "not",
                  "so!", "God!"]
    rng = random.Random(1)
    (root / path).write_text(" ".join(rng.choice(vocabulary) for _ in range(words)) + "\n")


@generator
def text_file(root: Path, path: str, text: str) -> None:
    """A small text file the script's own CLI reads (a LightningCLI --config yaml, a data file)."""
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


@generator
def names(root: Path, path: str = "names.txt", count: int = 400) -> None:
    """makemore's names.txt: one made-up name a line."""
    syllables = ["an", "be", "ca", "de", "el", "fi", "ga", "ho", "is", "ja", "ka", "li", "mo", "na", "ol", "pe",
                 "ra", "si", "ta", "vi"]
    rng = random.Random(0)
    lines = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(count)]
    (root / path).write_text("\n".join(lines) + "\n")


@generator
def hf_text_and_tokenizer(root: Path, folder: str = "tiny_lm") -> None:
    """A local text file and a local word-level tokenizer (tokenizer.json, tokenizer_config.json)
    for run_clm.py --train_file/--tokenizer_name: nothing comes from the Hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    vocabulary = ("the a model trains on tiny text and every step learns which word comes next in this small "
                  "corpus of sentences").split()
    lines = _words(0, vocabulary, 400, 6, 16)
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("\n".join(lines) + "\n")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", model_max_length=64)
    fast.save_pretrained(out / "tokenizer")



@generator
def hf_gpt2_checkpoint(root: Path, folder: str = "tiny_lm", name: str = "gpt2-tiny", layers: int = 2,
                       width: int = 32) -> None:
    """A local pretrained-model folder (config.json, model.safetensors and the tokenizer of
    hf_text_and_tokenizer, which must run first) for run_clm.py --model_name_or_path: a 2-layer,
    32-wide GPT-2 with random float32 weights, saved as save_pretrained writes it."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = root / folder
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=width, n_layer=layers, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(out / name)
    tokenizer.save_pretrained(out / name)

def _hub_snapshot(hf_home: Path, kind: str, repo_id: str) -> Path:
    """The folder of a Hub repository's snapshot in the local Hub cache (HF_HOME/hub), with
    refs/main pointing at it, as a download would leave it: the libraries read it offline."""
    cache = hf_home / "hub" / f"{kind}s--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "refs" / "main").write_text(revision)
    snapshot = cache / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


@generator
def glue_mrpc_and_bert(root: Path, hf_home: str = "hf_home", train: int = 64, validation: int = 32,
                       model: str = "bert-base-cased", label_base: int = 0) -> None:
    """What accelerate's nlp_example.py downloads, made locally and tiny: the Hub cache entry of
    `bert-base-cased` (a 2-layer, 32-wide BERT with random weights and a word-piece tokenizer of
    our sentences' words) and the `datasets` cache of `nyu-mll/glue` `mrpc` (sentence pairs with
    a learnable label: whether the two sentences share their first word). hf_home is relative to
    root; the entry points HF_HOME there. label_base=1 numbers the classes 1 and 2 instead of 0
    and 1 (a dataset exported with 1-based class ids)."""
    import json
    import shutil
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    home = root / hf_home
    vocabulary = ("the a cat dog sat ran on to mat house big small red blue old new bird fish saw "
                  "ate").split()
    rng = random.Random(0)

    def pairs(n: int) -> dict[str, list]:
        first = [[rng.choice(vocabulary) for _ in range(rng.randint(5, 12))] for _ in range(n)]
        same = [rng.random() < 0.5 for _ in range(n)]
        second = [[f[0] if s else rng.choice([w for w in vocabulary if w != f[0]])]
                  + [rng.choice(vocabulary) for _ in range(rng.randint(4, 11))] for f, s in zip(first, same)]
        return {"sentence1": [" ".join(w) for w in first], "sentence2": [" ".join(w) for w in second],
                "label": [int(s) + label_base for s in same], "idx": list(range(n))}

    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for split, n in (("train", train), ("validation", validation), ("test", 8)):
            files[split] = str(Path(tmp) / f"{split}.parquet")
            pq.write_table(pa.table(pairs(n)), files[split])
        load_dataset("parquet", data_files=files, cache_dir=str(Path(tmp) / "cache"))
        prepared = next((Path(tmp) / "cache").glob("parquet/*/*/*/dataset_info.json")).parent
        # The offline fallback of load_dataset("nyu-mll/glue", "mrpc") reads a prepared dataset from
        # HF_HOME/datasets/<namespace>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow.
        target = home / "datasets" / "nyu-mll___glue" / "mrpc" / "0.0.0" / prepared.name
        target.mkdir(parents=True, exist_ok=True)
        for arrow in prepared.glob("*.arrow"):
            shutil.copy(arrow, target / arrow.name.replace("parquet-", "glue-"))
        info = json.loads((prepared / "dataset_info.json").read_text())
        info.update(dataset_name="glue", config_name="mrpc")
        (target / "dataset_info.json").write_text(json.dumps(info))

    snapshot = _hub_snapshot(home, "model", model)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocabulary]
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=64)
    fast.save_pretrained(snapshot)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(snapshot)


def prepare(root: Path, spec: dict[str, dict[str, Any]]) -> None:
    """Run the generators named in a yaml `prepare` mapping ({name: kwargs}) inside root."""
    for name, kwargs in spec.items():
        if name not in GENERATORS:
            raise KeyError(f"unknown data generator {name!r}; known: {', '.join(sorted(GENERATORS))}")
        GENERATORS[name](root, **(kwargs or {}))
